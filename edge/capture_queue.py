"""Every trigger (hardware button, keyboard, web page and API) puts its request in one queue, which the
daemon's loop works through one capture at a time. The busy rule lives here and only here: with
`while_busy = "ignore"` a request that arrives while a capture runs or waits is refused."""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

RELOAD = "reload"   # load the model bundles again (SIGHUP, `systemctl reload`)
STOP = "stop"       # end the loop


@dataclass
class CaptureRequest:
    sample_id: str = ""
    frame: np.ndarray | None = None     # a given frame; None: capture from the camera (or decode `upload`)
    source: str = "camera"
    upload: bytes | None = None         # an uploaded file, decoded in turn by the loop (one at a time)
    done: Future = field(default_factory=Future)   # the capture's record, once the loop has made it


class CaptureQueue:
    def __init__(self, while_busy: Literal["ignore", "queue"] = "ignore"):
        self.while_busy = while_busy
        self.requests: queue.Queue = queue.Queue()
        self.busy = threading.Lock()    # held while one capture is processed
        self.closed = False             # the loop has stopped: nothing more is taken

    def accepting(self) -> bool:
        """Whether a request now would be taken (asked before an upload is even read)."""
        return not self.closed and (self.while_busy == "queue" or not (self.busy.locked() or not self.requests.empty()))

    def submit(self, request: CaptureRequest) -> bool:
        """Queue a capture; False when it is refused because the device is busy."""
        if not self.accepting():
            return False
        self.requests.put(request)
        return True

    def control(self, command: str) -> None:
        """RELOAD or STOP, handled by the loop in turn with the captures."""
        self.requests.put(command)

    def next(self, timeout: float):
        """The next CaptureRequest, RELOAD or STOP; None after `timeout` seconds without one."""
        try:
            return self.requests.get(timeout=timeout)
        except queue.Empty:
            return None

    def cancel_waiting(self) -> None:
        """At shutdown: nothing more is taken, and the requests still waiting are cancelled, so no caller waits
        for ever."""
        self.closed = True
        while True:
            try:
                item = self.requests.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, CaptureRequest):
                item.done.cancel()
