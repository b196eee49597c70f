#!/usr/bin/env bash
# Install LeukoScreen as a systemd service on a Raspberry Pi or Jetson (run as root from the repo).
# Research use only; not for use in diagnostic procedures.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/opt/leukoscreen

id leukoscreen >/dev/null 2>&1 || useradd --system --home-dir /var/lib/leukoscreen --shell /usr/sbin/nologin leukoscreen
for group in video gpio i2c; do
    getent group "$group" >/dev/null || groupadd --system "$group"
done
usermod -a -G video,gpio,i2c leukoscreen

# --system-site-packages lets the venv see Raspberry Pi OS's picamera2 (apt install python3-picamera2).
python3 -m venv --system-site-packages "$prefix/venv"
"$prefix/venv/bin/pip" install --upgrade pip
"$prefix/venv/bin/pip" install "$repo[edge]"

install -d -m 0755 /etc/leukoscreen
[ -f /etc/leukoscreen/config.toml ] || install -m 0644 "$repo/systemd/config.example.toml" /etc/leukoscreen/config.toml
"$prefix/venv/bin/python" -c "from leukoscreen.edge.device_config import load_config; load_config('/etc/leukoscreen/config.toml')"

install -m 0644 "$repo/systemd/leukoscreen.service" /etc/systemd/system/leukoscreen.service
systemctl daemon-reload
systemctl enable --now leukoscreen.service
systemctl --no-pager status leukoscreen.service || true
