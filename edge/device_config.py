"""The device configuration: one TOML file, validated once at start-up into typed values.

Errors name the key and the bad value and are raised before any hardware is touched.
See systemd/config.example.toml for every key with its default.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from leukoscreen.edge.cell_finder import CellFinderConfig
from leukoscreen.edge.quality import QualityConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6)
    import tomli as tomllib

CAMERA_KINDS = ("picamera2", "opencv", "gstreamer", "folder", "synthetic")
BUTTON_KINDS = ("none", "gpiozero", "jetson", "keyboard")
DISPLAY_KINDS = ("emulated", "hd44780", "luma", "none")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key and the value."""


@dataclass(frozen=True)
class CameraConfig:
    kind: str = "synthetic"
    device: str = "0"                 # opencv: V4L2 index or path; gstreamer: pipeline string
    folder: str = ""                  # folder replay: images to cycle through
    width: int = 0                    # 0: the camera's default
    height: int = 0
    timeout_s: float = 5.0
    retry_max_s: float = 30.0         # longest wait between reconnection attempts


@dataclass(frozen=True)
class ButtonConfig:
    kind: str = "none"
    pin: int = 17                     # BCM numbering (gpiozero) or BOARD pin (Jetson.GPIO)
    pull_up: bool = True
    debounce_s: float = 0.05
    while_busy: str = "ignore"        # "ignore" or "queue" presses during a classification


@dataclass(frozen=True)
class DisplayConfig:
    kind: str = "emulated"
    cols: int = 16
    rows: int = 2
    i2c_address: int = 0x27
    i2c_expander: str = "PCF8574"
    png: str = ""                     # emulated: also draw the screen into this PNG file
    driver: str = "ssd1306"           # luma: the luma.oled device class (ssd1306, sh1106, ssd1309, ...)
    interface: str = "i2c"            # luma: i2c (bus 1, i2c_address) or spi (bus 0, device 0)


@dataclass(frozen=True)
class DeviceConfig:
    bundle: str = ""                  # empty: the shipped default bundle
    bundle_format: str = ""           # empty: the bundle's default format
    compare_bundles: tuple = ()       # more bundles run side by side on every field; only `bundle` decides
    runtime: str = "auto"
    onnx_providers: tuple = ()        # e.g. ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    threads: int = 2
    xnnpack: bool = True              # false: TFLite's built-in kernels, slower but without XNNPACK's second
                                      # copy of the weights (for large models on small boards)
    state_dir: str = "/var/lib/leukoscreen"
    min_free_mb: float = 200.0
    host: str = "127.0.0.1"
    port: int = 8080
    access_token: str = ""            # needed (6+ characters) to listen on the network; the web page asks once
    max_upload_mb: float = 20.0       # largest image the web page / API accepts
    camera: CameraConfig = field(default_factory=CameraConfig)
    button: ButtonConfig = field(default_factory=ButtonConfig)
    display: DisplayConfig = field(default_factory=DisplayConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    cell_finder: CellFinderConfig = field(default_factory=CellFinderConfig)


def _build(cls, values: dict, prefix: str):
    known = {f.name: f for f in fields(cls)}
    arguments = {}
    for key, value in values.items():
        where = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"unknown key {where!r} (known: {', '.join(known)})")
        default = getattr(cls(), key)
        if hasattr(default, "__dataclass_fields__"):
            if not isinstance(value, dict):
                raise ConfigError(f"{where} must be a table ([{where}]), got {value!r}")
            arguments[key] = _build(type(default), value, f"{where}.")
            continue
        expected = type(default)
        if expected is tuple and isinstance(value, list):
            value = tuple(value)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            kind = {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
                    tuple: "a list"}.get(expected, expected.__name__)
            raise ConfigError(f"{where} = {value!r}: expected {kind}")
        arguments[key] = value
    try:
        return cls(**arguments)
    except ValueError as error:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {error}") from error


def parse_config(values: dict) -> DeviceConfig:
    config = _build(DeviceConfig, values, "")
    checks = [("camera.kind", config.camera.kind, CAMERA_KINDS), ("button.kind", config.button.kind, BUTTON_KINDS),
              ("display.kind", config.display.kind, DISPLAY_KINDS),
              ("button.while_busy", config.button.while_busy, ("ignore", "queue")),
              ("display.interface", config.display.interface, ("i2c", "spi")),
              ("runtime", config.runtime, ("auto", "litert", "tflite-runtime", "onnx"))]
    for key, value, allowed in checks:
        if value not in allowed:
            raise ConfigError(f"{key} = {value!r}: use one of {', '.join(allowed)}")
    if config.camera.kind == "folder" and not Path(config.camera.folder).is_dir():
        raise ConfigError(f"camera.folder = {config.camera.folder!r}: not a folder (camera.kind is 'folder')")
    if not 0 <= config.port < 65536:
        raise ConfigError(f"port = {config.port}: use 1-65535 (or 0: any free port)")
    if config.host not in LOOPBACK_HOSTS and not config.access_token:
        raise ConfigError(f"host = {config.host!r} listens on the network: set access_token too")
    if config.access_token and len(config.access_token) < 6:
        raise ConfigError("access_token is too short: use at least 6 characters (a PIN of 6+ digits or a passphrase)")
    if not 0 < config.max_upload_mb <= 200:
        raise ConfigError(f"max_upload_mb = {config.max_upload_mb}: use a size in MB between 0 and 200")
    if (config.display.cols, config.display.rows) not in ((16, 2), (20, 4)):
        raise ConfigError(f"display.cols/rows = {config.display.cols}x{config.display.rows}: use 16x2 or 20x4")
    if config.threads < 1:
        raise ConfigError(f"threads = {config.threads}: use 1 or more")
    return config


def load_config(path: str | Path | None) -> DeviceConfig:
    """Read and validate a TOML file; None gives the defaults (synthetic camera, emulated display, results
    under ~/.local/state/leukoscreen)."""
    if path is None:
        return parse_config({"state_dir": str(Path.home() / ".local" / "state" / "leukoscreen")})
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"configuration file {path} cannot be read ({error.strerror})") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"configuration file {path} is not valid TOML: {error}") from error
    return parse_config(values)
