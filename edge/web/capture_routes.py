"""Routes of the device itself: its status, the live preview, and classification (the same trigger as
the hardware button, or an uploaded image)."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from leukoscreen.edge.cameras import CameraError
from leukoscreen.edge.capture_record import CaptureRecord
from leukoscreen.edge.device_status import StatusView
from leukoscreen.edge.image_io import ImageReadError
from leukoscreen.edge.web.dependencies import DaemonDep, body_within_limit, within_time
from leukoscreen.edge.web.schemas import CaptureView, ClassifyRequest, SampleField, parse

router = APIRouter(prefix="/api")
BUSY = "a classification is running: wait for its result and press again"
STOPPING = "the device is stopping; try again when it is back"


def refuse_unless_accepting(daemon) -> None:
    if daemon.queue.closed:
        raise HTTPException(503, STOPPING)
    if not daemon.queue.accepting():
        raise HTTPException(409, BUSY)

UPLOAD_FORM = {"type": "object", "required": ["file"], "properties": {
    "file": {"type": "string", "format": "binary", "description": "the image (JPEG, PNG, BMP or TIFF)"},
    "sample_id": {"type": "string"}}}
CLASSIFY_BODIES = {"requestBody": {"required": False, "content": {
    "application/json": {"schema": ClassifyRequest.model_json_schema()},
    "multipart/form-data": {"schema": UPLOAD_FORM}}}}


@router.get("/status", summary="Device status: state, camera, model bundle, disk, uptime, version")
def status(daemon: DaemonDep) -> StatusView:
    return daemon.status_view()


@router.get("/preview.jpg", summary="One live preview frame (JPEG); its focus score in X-Focus-Score",
            responses={200: {"content": {"image/jpeg": {}}}, 503: {"description": "camera not connected"}})
def preview(daemon: DaemonDep) -> Response:
    try:
        jpeg, focus = daemon.camera.preview_jpeg()
    except CameraError as error:
        return JSONResponse({"detail": str(error), "camera": daemon.camera.state}, status_code=503)
    return Response(jpeg, media_type="image/jpeg", headers={"X-Focus-Score": f"{focus:.1f}",
                                                            "Cache-Control": "no-store"})


async def _upload(request: Request) -> tuple[SampleField, bytes, str]:
    form = await within_time(request.form(max_files=1, max_fields=2))
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise HTTPException(400, "the multipart form needs the image in the field 'file'")
    fields = parse(SampleField, {"sample_id": form.get("sample_id")})
    return fields, await upload.read(), f"upload: {(upload.filename or 'upload')[:100]}"


@router.post("/classify", summary="Capture and classify a field, or classify an uploaded image",
             description="JSON `{\"sample_id\": \"...\"}` (or an empty body) triggers a capture, like the hardware "
                         "button. A multipart form with the image in the field `file` (and optionally `sample_id`) "
                         "classifies that image. The result is stored either way. 409 while another "
                         "classification runs; 503 when the camera or storage fails (the body is the record).",
             dependencies=[Depends(body_within_limit)], openapi_extra=CLASSIFY_BODIES,
             responses={409: {"description": "busy"}, 503: {"model": CaptureRecord}})
async def classify(request: Request, daemon: DaemonDep) -> CaptureView:
    refuse_unless_accepting(daemon)  # before any of the body is read or decoded
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    upload, source = None, "camera"
    if kind == "multipart/form-data":
        fields, upload, source = await _upload(request)
    elif kind in ("application/json", ""):
        fields = parse(ClassifyRequest, body=await within_time(request.body()))
    else:
        raise HTTPException(415, f"content type {kind!r}: send JSON, or a multipart form with 'file'")
    waiting = daemon.request(fields.sample_id, upload, source)
    if waiting is None:
        raise HTTPException(503, STOPPING) if daemon.queue.closed else HTTPException(409, BUSY)
    try:  # awaited, not waited for in a thread: requests in the queue hold no worker threads
        record = await asyncio.wrap_future(waiting)
    except ImageReadError as error:
        raise HTTPException(400, str(error)) from error
    except asyncio.CancelledError:
        if not waiting.cancelled():
            raise  # this request itself was cancelled (the client went away)
        raise HTTPException(503, STOPPING) from None
    if record.capture_id is None:
        return JSONResponse(record.model_dump(mode="json"), status_code=503)
    row = daemon.store.capture(record.capture_id)
    return CaptureView.of(row, daemon.store.record(row), timings_ms=record.timings_ms)
