"""Shared fixtures: the real data folder when it is there, and small generated images otherwise."""
from __future__ import annotations

import contextlib
import io
import json
import re
import struct
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
# Python source that makes the desktop stack unimportable, as on a device without it; prepend it to code
# run in a subprocess.
BLOCK_DESKTOP_IMPORTS = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'tensorflow', 'keras', 'sklearn', 'tf2onnx'}:
            raise ImportError('desktop package imported on the device side: ' + name)
sys.meta_path.insert(0, Blocker())
"""
SHARED_DATA = REPO.parent / "shared" / "data"
# "name version" of the shipped default bundle, as the device shows it
DEFAULT_TITLE = "{name} {version}".format(**json.loads((REPO / "edge" / "default_bundle" / "manifest.json").read_text()))


def smear_image(rng: np.random.Generator, blast: bool, size: int = 96) -> np.ndarray:
    """A crude smear field (RGB uint8): pink background, red cells, one purple white cell whose nucleus
    is large and round for a blast-like cell and small and lobed otherwise."""
    image = np.full((size, size, 3), (230, 200, 205), np.uint8)
    for _ in range(8):
        centre = tuple(int(v) for v in rng.integers(8, size - 8, 2))
        cv2.circle(image, centre, int(rng.integers(5, 8)), (205, 120, 130), -1)
    centre = tuple(int(v) for v in rng.integers(size // 3, 2 * size // 3, 2))
    if blast:
        cv2.circle(image, centre, size // 5, (120, 60, 150), -1)
    else:
        for dx, dy in ((-6, 0), (6, 2), (0, -6)):
            cv2.circle(image, (centre[0] + dx, centre[1] + dy), size // 14, (90, 40, 120), -1)
    noise = rng.normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A few hundred bytes of PNG whose header claims width x height pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(b"\x00" * (width * 3 + 1) * 4)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def write_manifest_values(folder: Path, values: dict) -> None:
    """Write a test's changed manifest with its manifest_sha256 made again (as `convert` would), so the change
    itself is what the device sees; a schema-1 or -2 manifest has none."""
    from leukoscreen.edge.manifest import manifest_digest
    if values.get("schema_version") == 3:
        values = values | {"manifest_sha256": manifest_digest(values)}
    (Path(folder) / "manifest.json").write_text(json.dumps(values))


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


class Device:
    """The device as `leukoscreen serve` runs it (daemon loop, web server on a free port of 127.0.0.1, the
    shipped default bundle) on a folder-replay camera of generated fields, with an HTTP client for it."""

    def __init__(self, tmp_path, camera_factory=None, **values):
        import httpx

        from leukoscreen.edge.daemon import Daemon
        from leukoscreen.edge.device_config import parse_config
        from leukoscreen.edge.displays import EmulatedDisplay
        from leukoscreen.edge.synthetic_smear import synthetic_field
        from leukoscreen.edge.web import WebServer
        fields = tmp_path / "fields"
        for seed in range(3):
            write_rgb(fields / f"field-{seed}.png", synthetic_field(seed, 320, white_cells=3).image)
        config = parse_config({"state_dir": str(tmp_path / "state"), "min_free_mb": 0, "port": 0,
                               "camera": {"kind": "folder", "folder": str(fields)}, **values})
        options = {"camera_factory": camera_factory} if camera_factory else {}
        self.daemon = Daemon(config, EmulatedDisplay(), **options)
        self.server = WebServer(self.daemon, host="127.0.0.1")
        self.server.start()
        self.loop = threading.Thread(target=self.daemon.run, daemon=True)
        self.loop.start()
        self.client = httpx.Client(base_url=self.server.url, timeout=30)

    def close(self):
        if self.client.is_closed:  # closed already
            return
        self.client.close()
        self.daemon.stop()
        self.loop.join(timeout=10)
        self.server.stop()
        self.daemon.close()


@pytest.fixture
def aria_like(tmp_path) -> Path:
    """A tiny data folder with all-aria file names: Benign (normal-looking) and Early (blast-like)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "aria"
    for cls, name, blast in (("Benign", "WBC-Benign-{:03d}.jpg", False),
                             ("Early", "WBC-Malignant-Early-{:03d}.jpg", True)):
        for number in range(1, 31):
            write_rgb(root / cls / name.format(number), smear_image(rng, blast))
    return root


def encode(image: np.ndarray, suffix: str = ".png") -> bytes:
    return cv2.imencode(suffix, image)[1].tobytes()


@pytest.fixture
def device(tmp_path):
    """The device as `leukoscreen serve` runs it, on loopback, with the synthetic camera."""
    running = Device(tmp_path)
    yield running
    running.close()


@pytest.fixture
def token_device(tmp_path):
    """The device with an access token, listening beyond loopback."""
    running = Device(tmp_path, access_token="open-sesame-42", host="0.0.0.0")
    yield running
    running.close()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own cache folder, so no test depends on another's cached files."""
    monkeypatch.setenv("LEUKOSCREEN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    """Train 2 epochs on generated images and convert to all five formats (once per test session)."""
    from leukoscreen.convert.bundle_builder import convert_run
    from leukoscreen.training.runs import TrainConfig
    from leukoscreen.training.train import train
    root = tmp_path_factory.mktemp("convert")
    rng = np.random.default_rng(0)
    for cls, pattern, blast in (("Benign", "WBC-Benign-{:03d}.jpg", False),
                                ("Early", "WBC-Malignant-Early-{:03d}.jpg", True)):
        for number in range(1, 31):
            write_rgb(root / "data" / cls / pattern.format(number), smear_image(rng, blast))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEUKOSCREEN_CACHE", str(root / "cache"))
        train(TrainConfig(data=str(root / "data"), task="binary", epochs=2, batch_size=8, block_size=3),
              root / "run", n_boot=10)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            convert_run(root / "run", root / "bundle", ALL_FORMATS, representative=20, allow_drop=True)
    (root / "convert.log").write_text(printed.getvalue())
    print(printed.getvalue())
    return root / "bundle"


ALL_FORMATS = ["tflite-int8", "tflite-dynamic", "tflite-fp32", "onnx-fp32", "onnx-int8"]


def left_out_formats(printed: str) -> set[str]:
    """The formats `convert` or `bundle guard` left out, with a note, because the guard fitted on the default
    format's features does not fit theirs (a 2-epoch model's dynamic-range file can compute features that far
    off); the session bundle's are in its convert.log."""
    return set(re.findall(r"note: (\S+) left out of the bundle", printed))
