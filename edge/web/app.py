"""The device's local web page and HTTP API (FastAPI, served by uvicorn inside `leukoscreen serve`).

The page (`static/`) shows the live preview with its focus score, a Classify button (the same trigger as
the hardware button) and an upload, the latest result with a box around every cell, the history of samples
with export, and the device status. JSON endpoints live under /api/ (routers in `capture_routes.py`,
`result_routes.py` and `bundle_routes.py`); the OpenAPI description is at /openapi.json. Every asset is served by the device (it
is offline). Access rules are in `access.py`. Results are screening aids for research use only.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import uvicorn
from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from leukoscreen import RESEARCH_USE_NOTICE, __version__
from leukoscreen.edge.daemon import Daemon
from leukoscreen.edge.validation import LOOPBACK_HOSTS
from leukoscreen.edge.web import bundle_routes, capture_routes, result_routes
from leukoscreen.edge.web.access import AccessRequired, AccessRule, access_required_response
from leukoscreen.edge.web.http_rules import HttpRules

STATIC = Path(__file__).resolve().parent / "static"


def create_app(daemon: Daemon) -> FastAPI:
    access = AccessRule(daemon.config.access_token)
    app = FastAPI(title="LeukoScreen device", version=__version__, docs_url=None, redoc_url=None,
                  description=f"Screening aid for leukemia in blood smears. {RESEARCH_USE_NOTICE}")
    app.state.daemon = daemon
    app.add_exception_handler(AccessRequired, access_required_response)
    app.add_middleware(HttpRules, loopback_only=daemon.config.host in LOOPBACK_HOSTS)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(access.router())
    for routes in (capture_routes.router, result_routes.router, bundle_routes.router):
        app.include_router(routes, dependencies=[Depends(access)])

    @app.get("/", include_in_schema=False, dependencies=[Depends(access)])
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    return app


class WebServer:
    """uvicorn in a background thread, so the daemon keeps the main thread (signals, keyboard)."""

    def __init__(self, daemon: Daemon, host: str | None = None, port: int | None = None):
        self.host, self.port = host or daemon.config.host, port if port is not None else daemon.config.port
        config = uvicorn.Config(create_app(daemon), host=self.host, port=self.port, log_level="warning",
                                access_log=False, timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="web", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the web page could not listen on {self.host}:{self.port} (is the port in use, "
                              "or is the host not an address of this device? set port and host in the config, "
                              "or use --port and --host; the error is above)")
            time.sleep(0.02)
        if self.port == 0:  # an ephemeral port (tests, benchmarks): find out which
            self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
