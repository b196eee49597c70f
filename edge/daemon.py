"""`leukoscreen serve`: the device daemon. It only wires the parts together, in the order of a capture:

trigger (button, keyboard, web: one queue) -> camera frame -> field analysis (stain mask -> cell finder ->
quality gate) -> the model set (the deciding bundle, and those compared with it) -> one capture record ->
result store (and its outbox, when MQTT is on) -> displays (LCD, web page); the MQTT sender empties the outbox.

A missing camera, a full disk or a bad image never stops it: the displays say what is wrong and the
daemon keeps running (the camera is retried with back-off). A missing or altered model bundle stops it
before it starts, with the reason. It tells systemd when it is ready and keeps its watchdog fed.
"""
from __future__ import annotations

import sqlite3
import sys
import time
import traceback
from concurrent.futures import Future
from functools import partial

import numpy as np

from leukoscreen import __version__
from leukoscreen.edge.camera_supervisor import NOT_CONNECTED, CameraSupervisor
from leukoscreen.edge.cameras import CameraError, open_camera
from leukoscreen.edge.capture_queue import RELOAD, STOP, CaptureQueue, CaptureRequest
from leukoscreen.edge.capture_record import CaptureRecord, failed, retake
from leukoscreen.edge.device_config import DeviceConfig
from leukoscreen.edge.device_status import BundleStatus, DeviceStatus, DiskStatus, OutboxStatus, StatusView
from leukoscreen.edge.displays import Display, open_display
from leukoscreen.edge.image_io import ImageReadError, decode_image
from leukoscreen.edge.model_set import ModelSet
from leukoscreen.edge.mqtt_messages import capture_messages
from leukoscreen.edge.result_store import ResultStore, StoreError
from leukoscreen.edge.screening import screen
from leukoscreen.edge.systemd_notify import notify, watchdog_interval_s


def _elapsed_ms(since: float) -> float:
    return (time.perf_counter() - since) * 1e3


class Daemon:
    def __init__(self, config: DeviceConfig, display: Display | None = None, camera_factory=open_camera):
        self.config = config
        self.status = DeviceStatus()
        self.display = display or open_display(config.display)
        self.display.show("starting", "loading model")
        self.models = ModelSet.load(config)  # a bad bundle stops the start
        messages = partial(capture_messages, config.mqtt, config.device_name) if config.mqtt.enabled else None
        self.store = ResultStore(config.state_dir, config.min_free_mb, messages)
        self.sender = None
        if config.mqtt.enabled:  # paho is imported only when MQTT is on
            from leukoscreen.edge.mqtt_sender import MqttSender
            self.sender = MqttSender(config.mqtt, config.device_name, self.store, self.models.deciding.title)
        self.camera = CameraSupervisor(config.camera, camera_factory)
        self.queue = CaptureQueue(config.button.while_busy)
        for note in self.models.notes:  # an older manifest, a format refused by its self-test
            self._note(note)
            self.store.audit("bundle_note", {"note": note})
        if self.store.read_only:  # started on a full disk: say so before anyone presses the button
            self._note(self.store.read_only)

    def _note(self, message: str) -> None:
        """Add a note to the status message (once: a refusal repeated at every reload is shown once)."""
        if message not in self.status.message:
            self.status.message = f"{self.status.message} {message}".strip()
        print(message, file=sys.stderr)

    # --- triggers -----------------------------------------------------------------------------------
    def press(self, sample_id: str = "") -> str:
        """The hardware button or the keyboard. Returns what happened to the press."""
        return "queued" if self.queue.submit(CaptureRequest(sample_id)) else "busy: press ignored"

    def request(self, sample_id: str = "", upload: bytes | None = None, source: str = "camera"
                ) -> Future | None:
        """The web page or API: a capture, or an uploaded image file, through the same queue. Returns the
        future of its record (which raises ImageReadError for an upload that is not a usable image, and is
        cancelled when the device stops first), or None when the device does not take it now."""
        request = CaptureRequest(sample_id, source=source, upload=upload)
        return request.done if self.queue.submit(request) else None

    # --- one capture (also callable directly, e.g. by benchmarks) --------------------------------------
    def capture_once(self, sample_id: str = "") -> CaptureRecord:
        with self.queue.busy:
            return self._process(CaptureRequest(sample_id))

    def classify_frame(self, frame: np.ndarray, sample_id: str = "", source: str = "camera") -> CaptureRecord:
        with self.queue.busy:
            return self._process(CaptureRequest(sample_id, frame, source))

    def _process(self, request: CaptureRequest) -> CaptureRecord:
        """Capture (unless the request carries a frame), screen, store and display; never raises for
        device-side problems."""
        started = time.perf_counter()
        frame, timings = request.frame, {}
        if request.upload is not None:  # decoded here, one at a time: the busy rule bounds the memory it takes
            frame = decode_image(request.upload, request.source.removeprefix("upload: "))
            timings["decode"] = _elapsed_ms(started)
        elif frame is None:
            self.status.state = "capturing"
            self.display.show("capturing")
            try:
                frame = self.camera.grab(still=True)
            except CameraError as error:
                return self._show(failed(f"No frame from the camera: {error}", sample_id=request.sample_id),
                                  "camera")
            timings["capture"] = _elapsed_ms(started)
        record = self._screen(frame, request)
        record = record.model_copy(update={"timings_ms": record.timings_ms | timings})
        stored_at = time.perf_counter()
        try:
            record = self.store.add(record, frame)
        except (StoreError, ValueError, sqlite3.Error) as error:
            return self._show(failed(str(error), sample_id=request.sample_id), "store")
        if self.sender:
            self.sender.wake()
        timings = {"store": _elapsed_ms(stored_at)} | ({"total": _elapsed_ms(started)} if "capture" in timings else {})
        self.status.captures += 1
        if self.status.state == "error":  # the problem is gone: a capture was stored
            self.status.message = ""
        self.status.state = "ready"
        return self._show(record.model_copy(update={"timings_ms": record.timings_ms | timings}))

    def _screen(self, frame: np.ndarray, request: CaptureRequest) -> CaptureRecord:
        models, values = self.models, {"source": request.source, "sample_id": request.sample_id}
        try:
            return screen(frame, models.deciding, self.config.cell_finder, self.config.quality, models.compared,
                          self.config.scale, **values)
        except ValueError as error:  # a frame of the wrong shape
            return retake(None, f"Retake: unusable frame ({error})", models.deciding.title, models.deciding.sha256,
                          **values)

    def _show(self, record: CaptureRecord, failed_part: str = "") -> CaptureRecord:
        if failed_part:
            self.status.state, self.status.message = "error", record.message
            try:
                self.store.audit("error", {"source": failed_part, "message": record.message})
            except sqlite3.Error:  # the store itself may be what failed (disk full)
                pass
        self.display.show_capture(record)
        return record

    # --- model bundles ---------------------------------------------------------------------------------
    def reload(self) -> bool:
        """Load the configured bundles again (e.g. a new version copied into place). A set that does not
        load is refused and the running one stays; the status says which and why."""
        try:
            loaded = ModelSet.load(self.config)
        except Exception as error:  # BundleError and RuntimeProblem, and anything else a broken bundle causes:
            kept = self.models.deciding.title  # a reload never stops the running device
            self._note(f"Model reload refused, still using {kept}: {error}")
            self.store.audit("bundle_reload_refused", {"kept": kept, "reason": str(error)})
            return False
        with self.queue.busy:
            self.models = loaded
        self.status.message = " ".join([f"Model reloaded: {loaded.deciding.title}.", *loaded.notes])
        if self.sender:
            self.sender.set_bundle(loaded.deciding.title)
        self.store.audit("bundle_reloaded", loaded.describe() | {"notes": list(loaded.notes)})
        return True

    # --- status ----------------------------------------------------------------------------------------
    def status_view(self) -> StatusView:
        deciding = self.models.deciding
        manifest = deciding.bundle.manifest
        try:
            free_mb = round(self.store.free_mb(), 1)
        except OSError:
            free_mb = None
        return StatusView(
            state=self.status.state, message=self.status.message or self.camera.problem, camera=self.camera.state,
            busy=self.queue.busy.locked(), captures=self.status.captures,
            uptime_s=round(time.time() - self.status.started, 1), software_version=__version__,
            bundle=BundleStatus(name=manifest.name, version=manifest.version, task=manifest.task,
                                classes=manifest.class_names, input_kind=manifest.input_kind, format=deciding.format,
                                runtime=deciding.runner.name, sha256=deciding.sha256),
            compared_bundles=[model.title for model in self.models.compared],
            disk=DiskStatus(free_mb=free_mb, min_free_mb=self.store.min_free_mb), outbox=self._outbox_status())

    def _outbox_status(self) -> OutboxStatus | None:
        if self.sender is None:
            return None
        try:
            waiting, last_sent = self.store.outbox_state()
        except sqlite3.Error:
            waiting, last_sent = -1, None
        state = self.sender.state
        return OutboxStatus(broker=self.config.mqtt.broker, topics=self.config.mqtt.topic(self.config.device_name, "#"),
                            connected=state.connected, waiting=waiting, last_sent=last_sent, problem=state.last_error)

    # --- main loop -------------------------------------------------------------------------------------
    def run(self) -> None:
        if self.sender:
            self.sender.start()
        connected = self.camera.connect()
        problem = self.store.read_only or ("" if connected else NOT_CONNECTED)
        self.status.state = "error" if self.store.read_only else "ready"
        self.display.show("error" if problem else "ready", problem)
        notify("READY=1")
        notify(f"STATUS=ready; camera {self.camera.state}")
        interval = watchdog_interval_s() or 5.0
        while True:
            notify("WATCHDOG=1")
            item = self.queue.next(interval)
            if isinstance(item, CaptureRequest):
                self._run_request(item)
            elif item == RELOAD:
                self.reload()
            elif item == STOP:
                break
            elif self.camera.camera is None and self.camera.connect() and not self.store.read_only:
                if self.status.state == "error":
                    self.status.state, self.status.message = "ready", ""
                self.display.show("ready")
        self.queue.cancel_waiting()
        notify("STOPPING=1")

    def _run_request(self, request: CaptureRequest) -> None:
        """One queued capture. Its caller is answered once the device is free again, so that a client that
        sends its next request as soon as it has the answer is not told the device is busy."""
        try:
            with self.queue.busy:
                record = self._process(request)
        except ImageReadError as error:  # a bad upload: the caller says why
            request.done.set_exception(error)
        except Exception as error:  # a bug must not stop the device; the caller gets the error
            traceback.print_exc()
            self.status.state, self.status.message = "error", f"Unexpected error: {error}"
            self.display.show("error", str(error))
            request.done.set_exception(error)
        else:
            request.done.set_result(record)

    def stop(self) -> None:
        self.queue.control(STOP)

    def close(self) -> None:
        if self.sender:
            self.sender.stop()
        self.camera.close()
        self.display.close()
        self.store.close()
