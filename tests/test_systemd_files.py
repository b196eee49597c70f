import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from leukoscreen.edge.device_config import load_config

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"


def test_unit_has_notify_watchdog_and_hardening():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(SYSTEMD / "leukoscreen.service")
    service = unit["Service"]
    assert service["Type"] == "notify" and service["Restart"] == "on-failure" and "WatchdogSec" in service
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("StateDirectory", "leukoscreen"),
                       ("ConfigurationDirectory", "leukoscreen"), ("ReadWritePaths", "/var/lib/leukoscreen")):
        assert service[key] == value
    assert {"video", "gpio", "i2c"} <= set(service["SupplementaryGroups"].split())
    assert service["User"] == "leukoscreen"


def test_unit_file_verifies(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed here")
    text = (SYSTEMD / "leukoscreen.service").read_text()
    text = text.replace("/opt/leukoscreen/venv/bin/leukoscreen", shutil.which("true"))  # binary must exist
    unit = tmp_path / "leukoscreen.service"
    unit.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_example_config_is_valid():
    config = load_config(SYSTEMD / "config.example.toml")
    assert config.camera.kind == "picamera2" and config.display.kind == "hd44780"


def test_example_config_shows_every_setting():
    """The example is where an installer learns the settings: each one of every section is in it."""
    import dataclasses

    from leukoscreen.edge.device_config import DeviceConfig, tomllib
    shown = tomllib.loads((SYSTEMD / "config.example.toml").read_text())
    for item in dataclasses.fields(DeviceConfig):
        if dataclasses.is_dataclass(item.default_factory):  # a [section]
            section = {f.name for f in dataclasses.fields(item.default_factory)}
            assert section <= set(shown[item.name]), f"[{item.name}] lacks {section - set(shown[item.name])}"
        else:
            assert item.name in shown, f"{item.name} is not in the example config"
