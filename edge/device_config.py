"""The device configuration: one TOML file, validated once at start-up into typed values.

Every section is a pydantic dataclass that refuses unknown keys; errors name the key and the bad value
and are raised before any hardware is touched. systemd/config.example.toml shows every key with its default.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, field
from pathlib import Path
from typing import Literal, get_args

from pydantic import ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from leukoscreen.edge.cell_finder import CellFinderConfig
from leukoscreen.edge.manifest import Format
from leukoscreen.edge.device_status import device_name
from leukoscreen.edge.mqtt_messages import MqttConfig, check_topic_part
from leukoscreen.edge.quality import QualityConfig
from leukoscreen.edge.runtimes import Runtime, RuntimeOptions
from leukoscreen.edge.scale import ScaleConfig
from leukoscreen.edge.signing import parse_public_key
from leukoscreen.edge.validation import LOOPBACK_HOSTS, check_token, describe

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6)
    import tomli as tomllib

CameraKind = Literal["picamera2", "opencv", "gstreamer", "folder", "synthetic"]
ButtonKind = Literal["none", "gpiozero", "jetson", "keyboard"]
DisplayKind = Literal["emulated", "hd44780", "luma", "none"]
CAMERA_KINDS = get_args(CameraKind)
SECTION = ConfigDict(extra="forbid", allow_inf_nan=False)  # no NaN or infinity in a setting


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key and the value."""


@dataclass(frozen=True, config=SECTION)
class CameraConfig:
    kind: CameraKind = "synthetic"
    device: StrictStr = Field("0", description="opencv: V4L2 index or path; gstreamer: pipeline string")
    folder: StrictStr = Field("", description="folder replay: images to cycle through")
    width: StrictInt = Field(0, ge=0, description="0: the camera's default")
    height: StrictInt = Field(0, ge=0)
    timeout_s: StrictFloat = Field(5.0, gt=0)
    retry_max_s: StrictFloat = Field(30.0, gt=0, description="longest wait between reconnection attempts")


@dataclass(frozen=True, config=SECTION)
class ButtonConfig:
    kind: ButtonKind = "none"
    pin: StrictInt = Field(17, description="BCM numbering (gpiozero) or BOARD pin (Jetson.GPIO)")
    pull_up: StrictBool = True
    debounce_s: StrictFloat = Field(0.05, ge=0)
    while_busy: Literal["ignore", "queue"] = Field("ignore", description="what a press during a capture does")


@dataclass(frozen=True, config=SECTION)
class DisplayConfig:
    kind: DisplayKind = "emulated"
    cols: StrictInt = 16
    rows: StrictInt = 2
    i2c_address: StrictInt = 0x27
    i2c_expander: StrictStr = "PCF8574"
    png: StrictStr = Field("", description="emulated: also draw the screen into this PNG file")
    driver: StrictStr = Field("ssd1306", description="luma: the luma.oled device class (ssd1306, sh1106, ...)")
    interface: Literal["i2c", "spi"] = Field("i2c", description="luma: i2c (bus 1, i2c_address) or spi (bus 0)")

    def __post_init__(self):
        if (self.cols, self.rows) not in ((16, 2), (20, 4)):
            raise ValueError(f"display.cols/rows = {self.cols}x{self.rows}: use 16x2 or 20x4")


@dataclass(frozen=True, config=SECTION)
class DeviceConfig:
    bundle: StrictStr = Field("", description="model bundle folder; empty: the installed bundle (`leukoscreen "
                                              "bundle install`), else the shipped default bundle")
    bundle_format: Format | Literal[""] = Field("", description="empty: the bundle's default format")
    compare_bundles: tuple[StrictStr, ...] = Field((), description="bundles run beside `bundle` on every field; "
                                                                   "only `bundle` decides")
    trusted_keys: tuple[StrictStr, ...] = Field((), description="public keys (`ed25519:...`, from `leukoscreen "
                                                                "keygen`); when set, only bundles signed by one of "
                                                                "them are loaded")
    runtime: Runtime = "auto"
    onnx_providers: tuple[StrictStr, ...] = Field((), description="onnxruntime execution providers, in order")
    threads: StrictInt = Field(2, ge=1, le=64)
    xnnpack: StrictBool = Field(True, description="false: TFLite's built-in kernels, slower but without "
                                                  "XNNPACK's second copy of the weights (large models)")
    device_id: StrictStr = Field("", description="this device's name in MQTT topics and FHIR exports (letters, "
                                                 "digits, - _ .); empty: the host name")
    state_dir: StrictStr = "/var/lib/leukoscreen"
    min_free_mb: StrictFloat = Field(200.0, ge=0,
                                     description="below this free space new captures are refused")
    host: StrictStr = "127.0.0.1"
    port: StrictInt = 8080
    access_token: StrictStr = Field("", description="needed (12+ characters, 8 different) to listen on the network")
    max_upload_mb: StrictFloat = Field(20.0, description="largest image the web page / API accepts")
    camera: CameraConfig = field(default_factory=CameraConfig)
    button: ButtonConfig = field(default_factory=ButtonConfig)
    display: DisplayConfig = field(default_factory=DisplayConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    cell_finder: CellFinderConfig = field(default_factory=CellFinderConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)

    def __post_init__(self):
        if self.camera.kind == "folder" and not (self.camera.folder and Path(self.camera.folder).is_dir()):
            raise ValueError(f"camera.folder = {self.camera.folder!r}: not a folder of images (camera.kind is "
                             "'folder': set camera.folder, or --camera-folder)")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port = {self.port}: use 1-65535 (or 0: any free port)")
        if self.host not in LOOPBACK_HOSTS and not self.access_token:
            raise ValueError(f"host = {self.host!r} listens on the network: set access_token too")
        if self.access_token:
            check_token(self.access_token, "access_token")
        if self.device_id:
            check_topic_part(self.device_id, "device_id")
        for key in self.trusted_keys:
            parse_public_key(key)  # SigningError (a ValueError) naming the entry
        if not 0 < self.max_upload_mb <= 200:
            raise ValueError(f"max_upload_mb = {self.max_upload_mb}: use a size in MB between 0 and 200")

    @property
    def device_name(self) -> str:
        return device_name(self.device_id)

    @property
    def runtime_options(self) -> RuntimeOptions:
        return RuntimeOptions(format=self.bundle_format or None, runtime=self.runtime, threads=self.threads,
                              providers=self.onnx_providers, xnnpack=self.xnnpack)


def parse_config(values: dict) -> DeviceConfig:
    try:
        return TypeAdapter(DeviceConfig).validate_python(values)
    except ValidationError as error:
        raise ConfigError(describe(error)) from error


def with_changes(config: DeviceConfig, changes: dict) -> DeviceConfig:
    """The configuration with some keys changed (command-line options), validated like the file; a nested
    dict changes keys of that section."""
    values = asdict(config)
    for key, value in changes.items():
        values[key] = values[key] | value if isinstance(value, dict) else value
    return parse_config(values)


def load_config(path: str | Path | None) -> DeviceConfig:
    """Read and validate a TOML file; None gives the defaults (synthetic camera, emulated display, results
    under ~/.local/state/leukoscreen)."""
    if path is None:
        return parse_config({"state_dir": str(Path.home() / ".local" / "state" / "leukoscreen")})
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as error:
        raise ConfigError(f"configuration file {path} cannot be read ({error.strerror})") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"configuration file {path} is not a text file (TOML, UTF-8): byte {error.start} "
                          "cannot be read; is it the right file?") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"configuration file {path} is not valid TOML: {error}") from error
    return parse_config(values)
