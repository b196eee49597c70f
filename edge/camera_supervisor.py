"""The camera as the daemon sees it: connected on demand, reconnected with back-off after it is lost,
shared by the capture loop and the web preview (one lock), and a JPEG preview with its focus score."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import cv2
import numpy as np

from leukoscreen.edge.cameras import Camera, CameraError, open_camera
from leukoscreen.edge.device_config import CameraConfig
from leukoscreen.edge.quality import focus_score

NOT_CONNECTED = "Camera not connected"


class CameraSupervisor:
    def __init__(self, config: CameraConfig, factory: Callable[[CameraConfig], Camera] = open_camera):
        self.config, self.factory = config, factory
        self.camera: Camera | None = None
        self.state = "not connected"        # shown on the status page
        self.problem = ""                    # the last connection error, in words
        self.next_attempt = 0.0              # monotonic time of the next connection attempt
        self.backoff = 1.0
        self.lock = threading.RLock()

    def connect(self) -> bool:
        """Connect if there is no camera and the back-off allows a new attempt; True when connected."""
        with self.lock:
            if self.camera is None and time.monotonic() >= self.next_attempt:
                try:
                    self.camera = self.factory(self.config)
                    self.state, self.problem, self.backoff = f"connected ({self.camera.name})", "", 1.0
                except CameraError as error:
                    self._lost(str(error))
            return self.camera is not None

    def _lost(self, problem: str) -> None:
        if self.camera is not None:
            self.camera.close()
        self.camera, self.state, self.problem = None, "not connected", problem
        self.next_attempt = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, self.config.retry_max_s)

    def grab(self, still: bool = True) -> np.ndarray:
        """A still (for classification) or a preview frame. Raises CameraError, saying what is wrong (the camera's
        own words: unplugged, an empty replay folder, ...), when there is no frame."""
        with self.lock:
            if not self.connect():
                raise CameraError(self.problem or NOT_CONNECTED)
            try:
                return self.camera.capture() if still else self.camera.preview()
            except CameraError as error:
                self._lost(str(error))
                raise

    def preview_jpeg(self, max_width: int = 640) -> tuple[bytes, float]:
        """The live preview as JPEG (at most max_width wide) and its focus score (variance of the Laplacian,
        measured on the preview frame, so only comparable between previews). Raises CameraError."""
        frame = self.grab(still=False)
        focus = focus_score(frame)
        if frame.shape[1] > max_width:
            frame = cv2.resize(frame, (max_width, round(frame.shape[0] * max_width / frame.shape[1])),
                               interpolation=cv2.INTER_AREA)
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            raise CameraError("the preview frame could not be encoded")
        return encoded.tobytes(), focus

    def close(self) -> None:
        with self.lock:
            if self.camera is not None:
                self.camera.close()
                self.camera = None
