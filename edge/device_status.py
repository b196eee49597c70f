"""What the device says about itself: its running state, and the status view the web page and API show."""
from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from leukoscreen import RESEARCH_USE_NOTICE

State = Literal["starting", "ready", "capturing", "error"]


def device_name(device_id: str = "") -> str:
    """The device's name in MQTT topics and FHIR exports: the configured `device_id`, else the host name
    (letters, digits, '-', '_' and '.')."""
    return device_id or re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()).strip("-._")[:64] or "device"


@dataclass
class DeviceStatus:
    state: State = "starting"
    message: str = ""                # the last thing the technician should know (an error, a reload)
    started: float = field(default_factory=time.time)
    captures: int = 0                # since the start


class BundleStatus(BaseModel):
    name: str
    version: str
    task: str
    classes: list[str]
    input_kind: str
    format: str
    runtime: str = Field(description="e.g. 'litert', 'litert built-in' (xnnpack = false), 'onnxruntime'")
    sha256: str = Field(description="sha256 of the model file in use")


class DiskStatus(BaseModel):
    free_mb: float | None = Field(description="free space of the state directory (None: unknown)")
    min_free_mb: float


class OutboxStatus(BaseModel):
    broker: str
    topics: str = Field(description="e.g. leukoscreen/lab-1/# (results, samples, status)")
    connected: bool
    waiting: int = Field(description="messages in the outbox not yet acknowledged by the broker")
    last_sent: str | None = Field(description="when the broker last acknowledged a message (UTC)")
    problem: str = ""


class StatusView(BaseModel):
    state: State
    message: str
    camera: str
    busy: bool
    captures: int
    uptime_s: float
    software_version: str
    bundle: BundleStatus
    compared_bundles: list[str]
    disk: DiskStatus
    outbox: OutboxStatus | None = Field(None, description="MQTT (none when it is off)")
    notice: str = RESEARCH_USE_NOTICE
