"""`leukoscreen serve`: the device daemon. It only wires the pipeline together:

trigger -> camera -> screening (quality gate, cell finder, model, decision) -> result store -> displays.
Triggers are the hardware button, the keyboard and the web page (`edge/web.py`), which also reads the
live preview, the status and the stored results through this class.

A missing camera, a full disk or a bad image never stops it: the displays say what is wrong and the
daemon keeps running (the camera is retried with back-off). A missing or altered model bundle stops it
before it starts, with the reason. It tells systemd when it is ready and keeps its watchdog fed.
"""
from __future__ import annotations

import queue
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from leukoscreen import RESEARCH_USE_NOTICE, __version__
from leukoscreen.edge.bundle import BundleError, load_bundle
from leukoscreen.edge.cameras import Camera, CameraError, open_camera
from leukoscreen.edge.device_config import DeviceConfig
from leukoscreen.edge.displays import Display, open_display
from leukoscreen.edge.quality import focus_score
from leukoscreen.edge.result_store import ResultStore, StoreError
from leukoscreen.edge.runtimes import RuntimeProblem
from leukoscreen.edge.screening import DEFAULT_BUNDLE, Screener
from leukoscreen.edge.systemd_notify import notify, watchdog_interval_s


RELOAD = object()  # put on the request queue (SIGHUP) to reload the model bundles in the main loop


@dataclass
class DeviceStatus:
    state: str = "starting"
    camera: str = "not connected"
    message: str = ""
    started: float = field(default_factory=time.time)
    captures: int = 0
    last_result: dict | None = None


class Daemon:
    def __init__(self, config: DeviceConfig, display: Display | None = None, camera_factory=open_camera):
        self.config = config
        self.status = DeviceStatus()
        self.display = display or open_display(config.display)
        self.display.show("starting", "loading model")
        self.screener, self.bundle_sha256, self.compared = self._load_models()  # a bad bundle stops the start
        self.store = ResultStore(config.state_dir, config.min_free_mb)
        self.camera_factory = camera_factory
        self.camera: Camera | None = None
        self.next_camera_attempt = 0.0
        self.camera_backoff = 1.0
        self.camera_lock = threading.RLock()  # the capture loop and the web preview share the camera
        self.requests: queue.Queue = queue.Queue()  # sample ids; RELOAD; None wakes the loop to stop
        self.busy = threading.Lock()
        self.stopping = threading.Event()

    # --- model bundles ---------------------------------------------------------------------------
    def _load_models(self) -> tuple[Screener, str, list[Screener]]:
        """The deciding bundle's screener and file hash, and the screeners of the bundles compared with it."""
        config = self.config
        providers = list(config.onnx_providers) or None
        bundle = load_bundle(config.bundle or DEFAULT_BUNDLE)
        sha256 = bundle.manifest["files"][config.bundle_format or bundle.default_format]["sha256"]
        deciding = Screener(bundle, config.bundle_format or None, config.runtime, config.threads,
                            config.cell_finder, config.quality, providers, config.xnnpack)
        compared = [Screener(load_bundle(path), None, config.runtime, config.threads, config.cell_finder,
                             config.quality, providers, config.xnnpack) for path in config.compare_bundles]
        return deciding, sha256, compared

    def reload(self) -> bool:
        """Load the configured bundles again (e.g. a new version copied into place). A bundle that does
        not validate or load is refused and the running ones stay; the status says which and why."""
        try:
            loaded = self._load_models()
        except (BundleError, RuntimeProblem, OSError, ValueError, KeyError) as error:
            self.status.message = f"Model reload refused, still using {self.screener.bundle.title}: {error}"
            self.store.audit("bundle_reload_refused", {"kept": self.screener.bundle.title, "reason": str(error)})
            print(self.status.message, file=sys.stderr)
            return False
        with self.busy:
            self.screener, self.bundle_sha256, self.compared = loaded
        self.status.message = f"Model reloaded: {self.screener.bundle.title}"
        self.store.audit("bundle_reloaded", {"bundle": self.screener.bundle.title, "sha256": self.bundle_sha256,
                                             "compared": [c.bundle.title for c in self.compared]})
        return True

    def _compare(self, frame: np.ndarray) -> list[dict]:
        """The other configured bundles' answers on the same field (shown and stored; they do not decide)."""
        answers = []
        for screener in self.compared:
            try:
                other = screener.screen(frame).to_dict()
                answers.append({key: other[key] for key in ("bundle", "decision", "message", "blast_score",
                                                            "probabilities", "counts")})
            except (ValueError, RuntimeProblem) as error:
                answers.append({"bundle": screener.bundle.title, "decision": "error", "message": str(error)})
        return answers

    # --- camera with reconnection -------------------------------------------------------------
    def _camera(self) -> Camera | None:
        with self.camera_lock:
            return self._connect_camera()

    def _connect_camera(self) -> Camera | None:
        if self.camera is None and time.monotonic() >= self.next_camera_attempt:
            try:
                self.camera = self.camera_factory(self.config.camera)
                self.status.camera = f"connected ({self.camera.name})"
                self.camera_backoff = 1.0
            except CameraError as error:
                self.status.camera = "not connected"
                self.status.message = str(error)
                self.next_camera_attempt = time.monotonic() + self.camera_backoff
                self.camera_backoff = min(self.camera_backoff * 2, self.config.camera.retry_max_s)
        return self.camera

    def _camera_lost(self, error: CameraError) -> None:
        with self.camera_lock:
            if self.camera is not None:
                self.camera.close()
            self.camera = None
            self.status.camera = "not connected"
            self.status.message = str(error)
            self.next_camera_attempt = time.monotonic() + self.camera_backoff

    def _grab(self, still: bool) -> np.ndarray:
        """A still (for classification) or a preview frame; CameraError when there is no camera."""
        with self.camera_lock:
            camera = self._camera()
            if camera is None:
                raise CameraError("Camera not connected")
            try:
                return camera.capture() if still else camera.preview()
            except CameraError as error:
                self._camera_lost(error)
                raise CameraError("Camera not connected") from error

    def preview_jpeg(self, max_width: int = 640) -> tuple[bytes, float]:
        """The live preview as JPEG (at most max_width wide) and its focus score (variance of the Laplacian,
        measured on the preview frame, so only comparable between previews). Raises CameraError."""
        frame = self._grab(still=False)
        focus = focus_score(frame)
        if frame.shape[1] > max_width:
            frame = cv2.resize(frame, (max_width, round(frame.shape[0] * max_width / frame.shape[1])),
                               interpolation=cv2.INTER_AREA)
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            raise CameraError("the preview frame could not be encoded")
        return encoded.tobytes(), focus

    def status_dict(self) -> dict:
        manifest = self.screener.bundle.manifest
        try:
            free_mb = round(self.store.free_mb(), 1)
        except OSError:
            free_mb = None
        return {"state": self.status.state, "message": self.status.message, "camera": self.status.camera,
                "busy": self.busy.locked(), "captures": self.status.captures,
                "uptime_s": round(time.time() - self.status.started, 1), "software_version": __version__,
                "bundle": {"name": manifest["name"], "version": manifest["version"], "task": manifest["task"],
                           "classes": manifest["class_names"], "input_kind": manifest["input_kind"],
                           "format": self.config.bundle_format or self.screener.bundle.default_format,
                           "runtime": self.screener.runner.name, "sha256": self.bundle_sha256},
                "compared_bundles": [c.bundle.title for c in self.compared],
                "disk": {"free_mb": free_mb, "min_free_mb": self.store.min_free_mb},
                "notice": RESEARCH_USE_NOTICE}

    # --- one capture ----------------------------------------------------------------------------
    def press(self, sample_id: str = "") -> str:
        """A trigger (button, keyboard, web). Returns what happened to the press."""
        if self.busy.locked() and self.config.button.while_busy == "ignore":
            return "busy: press ignored"
        self.requests.put(sample_id)
        return "queued"

    def capture_once(self, sample_id: str = "") -> dict:
        """Capture, screen, store and display one field; never raises for device-side problems."""
        with self.busy:
            return self._capture(sample_id)

    def request(self, sample_id: str = "", frame: np.ndarray | None = None, source: str = "") -> dict | None:
        """A classification asked for by the web page or API: a capture, or the given (uploaded) frame.
        Returns None when another classification is running and presses while busy are ignored."""
        if not self.busy.acquire(blocking=self.config.button.while_busy == "queue"):
            return None
        try:
            return self._capture(sample_id) if frame is None else self.classify_frame(frame, sample_id, source)
        finally:
            self.busy.release()

    def _capture(self, sample_id: str) -> dict:
        self.status.state = "capturing"
        self.display.show("capturing")
        started = time.perf_counter()
        try:
            frame = self._grab(still=True)
        except CameraError:
            return self._report_error("Camera not connected", "camera")
        captured = time.perf_counter()
        result = self.classify_frame(frame, sample_id)
        result.setdefault("timings_ms", {}).update(capture=(captured - started) * 1e3,
                                                   total=(time.perf_counter() - started) * 1e3)
        return result

    def classify_frame(self, frame, sample_id: str = "", source: str = "camera") -> dict:
        try:
            result = self.screener.screen(frame).to_dict()
        except ValueError as error:  # a frame of the wrong shape
            result = {"decision": "retake", "message": f"Retake: unusable frame ({error}). {RESEARCH_USE_NOTICE}",
                      "quality": {}, "cells": []}
        result["source"] = source
        if self.compared and result["decision"] != "retake":
            result["compared"] = self._compare(frame)
        started = time.perf_counter()
        try:
            stored = self.store.add_capture(sample_id, frame, result, self.screener.bundle.title,
                                            self.bundle_sha256)
            result.setdefault("timings_ms", {})["store"] = (time.perf_counter() - started) * 1e3
            result.update(capture_id=stored.id, sample_id=stored.sample_id, image=stored.image.name,
                          time=stored.time)
        except (StoreError, ValueError, sqlite3.Error) as error:
            return self._report_error(str(error), "store")
        self.status.captures += 1
        self.status.last_result = result
        self.status.state = "ready"
        if result["decision"] == "retake":
            self.display.show("retake", result["quality"].get("reasons", ["unusable frame"])[0]
                              if result.get("quality") else "unusable frame")
        else:
            self.display.show("result", result["decision"])
        return result

    def _report_error(self, message: str, source: str) -> dict:
        self.status.state, self.status.message = "error", message
        self.display.show("error", message)
        try:
            self.store.audit("error", {"source": source, "message": message})
        except sqlite3.Error:  # the store itself may be what failed (disk full)
            pass
        return {"decision": "error", "message": message}

    # --- main loop -------------------------------------------------------------------------------
    def run(self) -> None:
        self._camera()
        self.status.state = "ready"
        self.display.show("ready" if self.camera else "error",
                          "" if self.camera else "Camera not connected")
        notify("READY=1")
        notify(f"STATUS=ready; camera {self.status.camera}")
        interval = watchdog_interval_s() or 5.0
        while not self.stopping.is_set():
            notify("WATCHDOG=1")
            try:
                sample_id = self.requests.get(timeout=interval)
            except queue.Empty:
                if self.camera is None and self._camera() is not None:
                    self.display.show("ready")
                continue
            if sample_id is RELOAD:
                self.reload()
            elif sample_id is not None:
                self.capture_once(sample_id)
        notify("STOPPING=1")

    def stop(self) -> None:
        self.stopping.set()
        self.requests.put(None)

    def close(self) -> None:
        with self.camera_lock:
            if self.camera is not None:
                self.camera.close()
        self.display.close()
        self.store.close()
