"""Camera sources behind one interface, chosen by configuration.

- picamera2: Pi camera modules / HQ camera, a full-resolution still on each capture.
- opencv: USB microscope cameras (V4L2 index or device path); gstreamer: a pipeline string
  (Jetson CSI cameras through nvarguscamerasrc).
- folder: cycles through the images of a folder (replay, demos, benchmarks).
- synthetic: generated smear fields (demos and tests).
Every source returns H x W x 3 uint8 RGB frames and raises CameraError when it cannot.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np

from leukoscreen.edge.device_config import CameraConfig
from leukoscreen.edge.image_io import IMAGE_SUFFIXES, ImageReadError, read_image
from leukoscreen.edge.synthetic_smear import synthetic_field


class CameraError(RuntimeError):
    """The camera is missing, unplugged or not answering; the daemon keeps running and retries."""


class Camera:
    name = "camera"

    def capture(self) -> np.ndarray:
        """A full-quality still for classification."""
        raise NotImplementedError

    def preview(self) -> np.ndarray:
        """A frame for the live preview (may be smaller)."""
        return self.capture()

    def close(self) -> None:
        pass


class SyntheticCamera(Camera):
    name = "synthetic"

    def __init__(self, size: int = 480, seed: int = 0):
        self.size, self.seeds = size, itertools.count(seed)

    def capture(self) -> np.ndarray:
        return synthetic_field(next(self.seeds), self.size).image


class FolderCamera(Camera):
    name = "folder"

    def __init__(self, folder: str | Path):
        self.files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise CameraError(f"camera folder {folder} holds no images")
        self.cycle = itertools.cycle(self.files)
        self.last: np.ndarray | None = None

    def capture(self) -> np.ndarray:
        for _ in range(len(self.files)):  # skip unreadable files, but not forever
            path = next(self.cycle)
            try:
                self.last = read_image(path)
                return self.last
            except ImageReadError:
                continue
        raise CameraError("no readable image in the camera folder")

    def preview(self) -> np.ndarray:
        return self.last if self.last is not None else self.capture()


class OpenCVCamera(Camera):
    """V4L2 device (index or path) or a GStreamer pipeline, through OpenCV's VideoCapture."""

    def __init__(self, source: str, gstreamer: bool = False, width: int = 0, height: int = 0):
        self.name = "gstreamer" if gstreamer else "opencv"
        if gstreamer:
            self.capture_device = cv2.VideoCapture(source, cv2.CAP_GSTREAMER)
        else:
            self.capture_device = cv2.VideoCapture(int(source) if source.isdigit() else source)
        if not self.capture_device.isOpened():
            raise CameraError(f"camera not connected ({self.name} source {source!r} cannot be opened)")
        if width and height:
            self.capture_device.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            self.capture_device.set(cv2.CAP_PROP_FRAME_HEIGHT, height)

    def capture(self) -> np.ndarray:
        ok, frame = self.capture_device.read()
        if not ok or frame is None:
            raise CameraError("camera not connected (no frame received)")
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self.capture_device.release()


class PiCamera(Camera):
    """Raspberry Pi camera through picamera2: a preview stream, and a full-resolution still on capture."""
    name = "picamera2"

    def __init__(self, width: int = 0, height: int = 0):
        try:
            from picamera2 import Picamera2
        except ImportError as error:
            raise CameraError("picamera2 is not installed (sudo apt install python3-picamera2 on Raspberry "
                              "Pi OS, and create the virtual environment with --system-site-packages)") from error
        try:
            self.camera = Picamera2()
            main = {"format": "RGB888"} | ({"size": (width, height)} if width and height else {})
            self.still = self.camera.create_still_configuration(main=main)
            self.camera.configure(self.camera.create_preview_configuration(main={"format": "RGB888"}))
            self.camera.start()
        except (RuntimeError, IndexError, OSError) as error:
            raise CameraError(f"camera not connected (picamera2: {error})") from error

    def capture(self) -> np.ndarray:
        try:
            # picamera2's "RGB888" arrays are in BGR order, as OpenCV expects
            return cv2.cvtColor(self.camera.switch_mode_and_capture_array(self.still, "main"), cv2.COLOR_BGR2RGB)
        except (RuntimeError, OSError) as error:
            raise CameraError(f"camera not connected (picamera2: {error})") from error

    def preview(self) -> np.ndarray:
        try:
            return cv2.cvtColor(self.camera.capture_array("main"), cv2.COLOR_BGR2RGB)
        except (RuntimeError, OSError) as error:
            raise CameraError(f"camera not connected (picamera2: {error})") from error

    def close(self) -> None:
        self.camera.stop()
        self.camera.close()


def open_camera(config: CameraConfig) -> Camera:
    if config.kind == "synthetic":
        return SyntheticCamera()
    if config.kind == "folder":
        return FolderCamera(config.folder)
    if config.kind in ("opencv", "gstreamer"):
        return OpenCVCamera(config.device, config.kind == "gstreamer", config.width, config.height)
    if config.kind == "picamera2":
        return PiCamera(config.width, config.height)
    raise CameraError(f"unknown camera kind {config.kind!r}")
