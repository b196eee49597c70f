"""What the device publishes over MQTT, and where: the topics, the JSON of each message, and the `[mqtt]` section
of the device configuration. Shared by the device (its outbox) and the regional collector; imports no MQTT client.

Topics (Frigate's convention of a prefix, the device, and a kind):
  <prefix>/<device>/results   one message per stored capture (its record; no image unless `thumbnail`)
  <prefix>/<device>/samples   the sample's running summary after each of its captures
  <prefix>/<device>/status    retained: online (with the software and model) or offline (the broker's last will)
Every message carries a stable `id` (made when the capture is stored): delivery is at least once, and a
receiver drops a message whose id it has seen. Research use only.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import re
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
from pydantic import ConfigDict, Field, StrictBool, StrictInt, StrictStr
from pydantic.dataclasses import dataclass

from leukoscreen import RESEARCH_USE_NOTICE, __version__
from leukoscreen.edge.sample_summary import summarize
from leukoscreen.edge.validation import LOOPBACK_HOSTS

TOPIC_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
THUMBNAIL_WIDTH = 160
KINDS = ("results", "samples", "status")


@dataclass(frozen=True, config=ConfigDict(extra="forbid", allow_inf_nan=False))
class MqttConfig:
    broker: StrictStr = Field("", description="mqtt://HOST[:PORT] (1883) or mqtts://HOST[:PORT] (TLS, 8883); empty: "
                                              "MQTT off (results are not queued for it)")
    topic_prefix: StrictStr = "leukoscreen"
    username: StrictStr = ""
    password: StrictStr = ""
    ca_file: StrictStr = Field("", description="mqtts: the broker's CA certificate (empty: the system's CAs)")
    cert_file: StrictStr = Field("", description="mqtts: a client certificate, when the broker asks for one")
    key_file: StrictStr = ""
    thumbnail: StrictBool = Field(False, description="add a small JPEG of the field to each result message")
    keepalive_s: StrictInt = Field(30, ge=5, le=3600)

    def __post_init__(self):
        if not self.broker:
            return
        check_topic_part(self.topic_prefix, "mqtt.topic_prefix")
        _, _, tls = self.address()  # ValueError naming the problem
        check_password_encrypted(self.broker, self.password, "mqtt.password", "mqtt.broker")
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, key)
            if path and not Path(path).is_file():
                raise ValueError(f"mqtt.{key} = {path!r}: no such file")
            if path and not tls:
                raise ValueError(f"mqtt.{key} is set but mqtt.broker = {self.broker!r} is not mqtts://")

    @property
    def enabled(self) -> bool:
        return bool(self.broker)

    def address(self) -> tuple[str, int, bool]:
        """(host, port, TLS) of the broker URL; ValueError for one that is not mqtt:// or mqtts://HOST[:PORT]."""
        return broker_address(self.broker, "mqtt.broker")

    def topic(self, device: str, kind: str) -> str:
        return f"{self.topic_prefix}/{device}/{kind}"


def check_topic_part(value: str, key: str) -> str:
    if not TOPIC_PART.fullmatch(value):
        raise ValueError(f"{key} = {value[:80]!r}: use up to 64 letters, digits, '-', '_' or '.', starting with a "
                         "letter or digit (no '/', '+', '#' or spaces)")
    return value


def check_password_encrypted(url: str, password: str, password_key: str, broker_key: str) -> None:
    """ValueError when a password would go to a broker that is neither encrypted nor on this machine."""
    host, _, tls = broker_address(url, broker_key)
    if password and not tls and host not in LOOPBACK_HOSTS:
        raise ValueError(f"{password_key} is set and {broker_key} = {url!r} is not encrypted: the password would "
                         "cross the network in clear text; use mqtts://")


def broker_address(url: str, key: str = "--broker") -> tuple[str, int, bool]:
    """(host, port, TLS) of mqtt://HOST[:PORT] or mqtts://HOST[:PORT]; ValueError saying what is wrong."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ValueError(f"{key} = {url[:120]!r}: {error}; write e.g. mqtt://127.0.0.1:1883") from error
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"{key} = {url[:120]!r}: write mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS)")
    if parts.username or parts.password:
        raise ValueError(f"{key}: put the user name and password in their own settings, not in the URL")
    try:
        parts.hostname.encode("idna")
    except UnicodeError as error:
        raise ValueError(f"{key} = {url[:120]!r}: {parts.hostname[:80]!r} is not a host name ({error})") from error
    if port == 0:
        raise ValueError(f"{key} = {url[:120]!r}: port 0; leave the port out for the default (1883, mqtts 8883)")
    tls = parts.scheme == "mqtts"
    return parts.hostname, port or (8883 if tls else 1883), tls


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def thumbnail(rgb: np.ndarray) -> str:
    """A small JPEG of the field, base64 text."""
    height = max(1, round(rgb.shape[0] * THUMBNAIL_WIDTH / rgb.shape[1]))
    small = cv2.resize(rgb, (THUMBNAIL_WIDTH, height), interpolation=cv2.INTER_AREA)
    return base64.b64encode(cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))[1].tobytes()).decode()


def capture_messages(config: MqttConfig, device: str, row: dict, sample_rows: list[dict], rgb: np.ndarray | None
                     ) -> list[tuple[str, str]]:
    """(topic, JSON) of the messages one stored capture sends: its result, and its sample's summary. `row` is
    the capture's stored row, `sample_rows` every stored row of its sample (this one included)."""
    result = {"id": str(uuid.uuid4()), "device": device, "capture_id": row["id"],
              "sample_id": row["sample_id"], "time": row["time"], "image": row["image"],
              "image_sha256": row["image_sha256"], "software_version": row["software_version"],
              "record": json.loads(row["result"]), "notice": RESEARCH_USE_NOTICE}
    if config.thumbnail and rgb is not None:
        result["thumbnail_jpeg"] = thumbnail(rgb)
    sample = {"id": str(uuid.uuid4()), "device": device,
              "summary": summarize(row["sample_id"], sample_rows).model_dump(mode="json")}
    return [(config.topic(device, "results"), json.dumps(result)), (config.topic(device, "samples"), json.dumps(sample))]


def status_message(device: str, state: str, bundle: str = "") -> str:
    """The retained status: online (with what the device runs) or offline (its last will)."""
    values = {"state": state, "device": device}
    if state == "online":
        values |= {"time": _now(), "software_version": __version__, "bundle": bundle}
    return json.dumps(values)
