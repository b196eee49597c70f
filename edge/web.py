"""The device's local web page and HTTP API (FastAPI, served by uvicorn inside `leukoscreen serve`).

The page (edge/web_static/) shows the live preview with its focus score, a Classify button (the same
trigger as the hardware button) and an upload, the latest result with a box around every cell, the
history of samples with export, and the device status. JSON endpoints live under /api/; the OpenAPI
description is at /openapi.json. Every asset is served by the device (it is offline). Access rules are
in `web_access.py`. Results are screening aids for research use only.
"""
from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import cv2
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from leukoscreen import RESEARCH_USE_NOTICE, __version__
from leukoscreen.edge.cameras import CameraError
from leukoscreen.edge.daemon import Daemon
from leukoscreen.edge.device_config import LOOPBACK_HOSTS
from leukoscreen.edge.image_io import ImageReadError, decode_image
from leukoscreen.edge.web_access import AccessControl

STATIC = Path(__file__).resolve().parent / "web_static"
THUMBNAIL_WIDTH = 200
EXPORT_FORMATS = {"zip": "application/zip", "csv": "text/csv", "json": "application/json"}


def _capture_view(row: dict) -> dict:
    """A stored capture as the API shows it: the stored columns plus the parsed result."""
    view = {k: row[k] for k in ("id", "sample_id", "time", "decision", "message", "blast_score", "image",
                                 "image_sha256", "bundle", "software_version", "exported")}
    view["result"] = json.loads(row["result"])
    view["image_url"] = f"/api/images/{row['image']}"
    view["thumbnail_url"] = f"/api/images/{row['image']}?size=thumb"
    return view


def _sample_id(value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HTTPException(400, f"sample_id must be text, got {type(value).__name__}")
    return value


def create_app(daemon: Daemon) -> FastAPI:
    config = daemon.config
    max_bytes = int(config.max_upload_mb * 1e6)
    app = FastAPI(title="LeukoScreen device", version=__version__, docs_url=None, redoc_url=None,
                  description=f"Screening aid for leukemia in blood smears. {RESEARCH_USE_NOTICE}")
    app.add_middleware(AccessControl, token=config.access_token)
    if config.host in LOOPBACK_HOSTS:  # added last, so it runs first
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "::1"])
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def check_length(request: Request) -> None:
        """Bodies are announced (no chunked uploads) and within the configured limit, before any is read."""
        if "chunked" in request.headers.get("transfer-encoding", "").lower():
            raise HTTPException(411, "send the request with a Content-Length (chunked bodies are not accepted)")
        length = int(request.headers.get("content-length") or 0)
        if length > max_bytes:
            raise HTTPException(413, f"the request is {length / 1e6:.1f} MB; the limit is {config.max_upload_mb:g} MB "
                                     "(max_upload_mb in the config)")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/status", summary="Device status: state, camera, model bundle, disk, uptime, version")
    def status() -> dict:
        return daemon.status_dict()

    @app.get("/api/preview.jpg", summary="One live preview frame (JPEG); its focus score in X-Focus-Score",
             responses={200: {"content": {"image/jpeg": {}}}, 503: {"description": "camera not connected"}})
    def preview() -> Response:
        try:
            jpeg, focus = daemon.preview_jpeg()
        except CameraError as error:
            return JSONResponse({"detail": str(error), "camera": daemon.status.camera}, status_code=503)
        return Response(jpeg, media_type="image/jpeg",
                        headers={"X-Focus-Score": f"{focus:.1f}", "Cache-Control": "no-store"})

    @app.post("/api/classify", summary="Capture and classify a field, or classify an uploaded image",
              description="JSON `{\"sample_id\": \"...\"}` (or an empty body) triggers a capture, like the "
                          "hardware button. A multipart form with the image in the field `file` (and "
                          "optionally `sample_id`) classifies that image. The result is stored either way. "
                          "409 while another classification runs; 503 when the camera or storage fails.")
    async def classify(request: Request) -> JSONResponse:
        check_length(request)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        frame, source = None, "camera"
        if kind == "multipart/form-data":
            form = await request.form(max_files=1, max_fields=2)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(400, "the multipart form needs the image in the field 'file'")
            sample_id = _sample_id(form.get("sample_id"))
            data = await upload.read()
            try:
                frame = await run_in_threadpool(decode_image, data, upload.filename or "upload")
            except ImageReadError as error:
                raise HTTPException(400, str(error)) from error
            source = f"upload: {(upload.filename or 'image')[:100]}"
        elif kind in ("application/json", ""):
            body = await request.body()
            try:
                values = json.loads(body) if body.strip() else {}
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise HTTPException(400, f"the body is not valid JSON ({error}); send "
                                         "{\"sample_id\": \"...\"} or nothing") from error
            if not isinstance(values, dict):
                raise HTTPException(400, "the JSON body must be an object like {\"sample_id\": \"S-12\"}")
            sample_id = _sample_id(values.get("sample_id"))
        else:
            raise HTTPException(415, f"content type {kind!r}: send JSON, or a multipart form with 'file'")
        if len(sample_id) > 64 or any(c in sample_id for c in "/\\\0"):
            raise HTTPException(400, "sample_id: use up to 64 characters without slashes")
        result = await run_in_threadpool(daemon.request, sample_id, frame, source)
        if result is None:
            raise HTTPException(409, "a classification is running: wait for its result and press again")
        status_code = 503 if result["decision"] == "error" else 200
        if "capture_id" in result:
            stored = daemon.store.capture(result["capture_id"])
            result = _capture_view(stored) | {"timings_ms": result.get("timings_ms", {})}
        return JSONResponse(result, status_code=status_code)

    @app.get("/api/results", summary="Stored captures, newest first")
    def results(limit: int = Query(50, ge=1, le=1000), sample_id: str | None = None,
                since: str | None = None, until: str | None = None) -> dict:
        rows = daemon.store.captures(sample_id, since, until, limit)
        return {"captures": [_capture_view(r) for r in rows], "notice": RESEARCH_USE_NOTICE}

    @app.get("/api/results/{capture_id}", summary="One stored capture")
    def result(capture_id: int) -> dict:
        row = daemon.store.capture(capture_id)
        if row is None:
            raise HTTPException(404, f"no capture {capture_id}")
        return _capture_view(row)

    @app.get("/api/samples", summary="Samples, newest first, with their captures' decisions")
    def samples(limit: int = Query(200, ge=1, le=5000)) -> dict:
        rows = daemon.store.samples(limit)
        for row in rows:
            image = row.pop("last_image")
            row["thumbnail_url"] = f"/api/images/{image}?size=thumb" if image else None
        return {"samples": rows, "notice": RESEARCH_USE_NOTICE}

    @app.get("/api/samples/{sample_id}", summary="One sample and all its captures")
    def sample(sample_id: str) -> dict:
        rows = daemon.store.captures(sample_id, limit=10_000)
        if not rows:
            raise HTTPException(404, f"no sample {sample_id!r}")
        return {"sample_id": sample_id, "captures": [_capture_view(r) for r in rows], "notice": RESEARCH_USE_NOTICE}

    @app.get("/api/images/{name}", summary="A stored field image (PNG), or a JPEG thumbnail with size=thumb",
             responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}})
    def image(name: str, size: str = Query("full", pattern="^(full|thumb)$")) -> Response:
        try:
            path = daemon.store.image_path(name)
        except FileNotFoundError as error:
            raise HTTPException(404, str(error)) from error
        cache = {"Cache-Control": "max-age=86400, immutable"}  # names carry the content hash
        if size == "full":
            return FileResponse(path, media_type="image/png", headers=cache)
        picture = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if picture is None:
            raise HTTPException(500, f"stored image {name} cannot be read; run an integrity check")
        height = round(picture.shape[0] * THUMBNAIL_WIDTH / picture.shape[1])
        thumbnail = cv2.resize(picture, (THUMBNAIL_WIDTH, height), interpolation=cv2.INTER_AREA)
        return Response(cv2.imencode(".jpg", thumbnail)[1].tobytes(), media_type="image/jpeg", headers=cache)

    @app.post("/api/export", summary="Export captures (a sample, a date range or all) as zip, CSV or JSON",
              description="Form or JSON fields: format (zip | csv | json), sample_id, since, until (ISO dates). "
                          "A zip holds CSV, JSON and the images and marks the captures exported; nothing is "
                          "ever deleted.")
    async def export(request: Request) -> Response:
        check_length(request)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if kind == "application/json":
                values = json.loads(await request.body() or b"{}")
            else:
                values = dict(await request.form(max_files=0, max_fields=4))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise HTTPException(400, f"the body is not valid JSON ({error})") from error
        if not isinstance(values, dict):
            raise HTTPException(400, "send an object like {\"format\": \"zip\", \"sample_id\": \"S-12\"}")
        fmt = values.get("format") or "zip"
        if fmt not in EXPORT_FORMATS:
            raise HTTPException(400, f"format {fmt!r}: use zip, csv or json")
        sample_id, since, until = (values.get(k) or None for k in ("sample_id", "since", "until"))
        if sample_id and not daemon.store.captures(sample_id, limit=1):
            raise HTTPException(404, f"no sample {sample_id!r}")
        stem = f"leukoscreen-{sample_id or 'results'}-{time.strftime('%Y%m%d-%H%M%S')}"
        headers = {"Content-Disposition": f'attachment; filename="{stem}.{fmt}"'}
        if fmt != "zip":
            rows = daemon.store.captures(sample_id, since, until, limit=1_000_000)
            csv_text, json_text = daemon.store.tables(rows)
            return Response(csv_text if fmt == "csv" else json_text, media_type=EXPORT_FORMATS[fmt], headers=headers)
        folder = tempfile.mkdtemp(prefix=".export-", dir=daemon.store.root)
        out = Path(folder) / f"{stem}.zip"
        try:
            await run_in_threadpool(daemon.store.export, out, sample_id, since, until)
        except OSError as error:
            _remove(out)
            raise HTTPException(507, f"the export could not be written ({error.strerror}); free some space") from error
        return FileResponse(out, media_type="application/zip", headers=headers,
                            background=BackgroundTask(_remove, out))

    return app


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.parent.rmdir()


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
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the web page could not listen on {self.host}:{self.port} (is the port in use? "
                              "set port in the config or use --port)")
            time.sleep(0.02)
        if self.port == 0:  # an ephemeral port (tests, benchmarks): find out which
            self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
