"""`leukoscreen serve`: the device daemon. It only wires the pipeline together:

trigger -> camera -> screening (quality gate, cell finder, model, decision) -> result store -> displays.

A missing camera, a full disk or a bad image never stops it: the displays say what is wrong and the
daemon keeps running (the camera is retried with back-off). A missing or altered model bundle stops it
before it starts, with the reason. It tells systemd when it is ready and keeps its watchdog fed.
"""
from __future__ import annotations

import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field

from leukoscreen import RESEARCH_USE_NOTICE
from leukoscreen.edge.bundle import load_bundle
from leukoscreen.edge.cameras import Camera, CameraError, open_camera
from leukoscreen.edge.device_config import DeviceConfig
from leukoscreen.edge.displays import Display, open_display
from leukoscreen.edge.result_store import ResultStore, StoreError
from leukoscreen.edge.screening import DEFAULT_BUNDLE, Screener
from leukoscreen.edge.systemd_notify import notify, watchdog_interval_s


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
        bundle = load_bundle(config.bundle or DEFAULT_BUNDLE)  # refuses to start on a bad bundle
        self.bundle_sha256 = bundle.manifest["files"][config.bundle_format or bundle.default_format]["sha256"]
        self.screener = Screener(bundle, config.bundle_format or None, config.runtime, config.threads,
                                 config.cell_finder, config.quality, list(config.onnx_providers) or None)
        self.store = ResultStore(config.state_dir, config.min_free_mb)
        self.camera_factory = camera_factory
        self.camera: Camera | None = None
        self.next_camera_attempt = 0.0
        self.camera_backoff = 1.0
        self.requests: queue.Queue[str] = queue.Queue()
        self.busy = threading.Lock()
        self.stopping = threading.Event()

    # --- camera with reconnection -------------------------------------------------------------
    def _camera(self) -> Camera | None:
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
        if self.camera is not None:
            self.camera.close()
        self.camera = None
        self.status.camera = "not connected"
        self.status.message = str(error)
        self.next_camera_attempt = time.monotonic() + self.camera_backoff

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
            self.status.state = "capturing"
            self.display.show("capturing")
            camera = self._camera()
            if camera is None:
                return self._report_error("Camera not connected", "camera")
            started = time.perf_counter()
            try:
                frame = camera.capture()
            except CameraError as error:
                self._camera_lost(error)
                return self._report_error("Camera not connected", "camera")
            captured = time.perf_counter()
            result = self.classify_frame(frame, sample_id)
            result.setdefault("timings_ms", {}).update(capture=(captured - started) * 1e3,
                                                       total=(time.perf_counter() - started) * 1e3)
            return result

    def classify_frame(self, frame, sample_id: str = "") -> dict:
        try:
            result = self.screener.screen(frame).to_dict()
        except ValueError as error:  # a frame of the wrong shape
            result = {"decision": "retake", "message": f"Retake: unusable frame ({error}). {RESEARCH_USE_NOTICE}",
                      "quality": {}, "cells": []}
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
            self.capture_once(sample_id)
        notify("STOPPING=1")

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        if self.camera is not None:
            self.camera.close()
        self.display.close()
        self.store.close()
