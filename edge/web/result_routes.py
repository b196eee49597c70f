"""Routes of the stored results: captures, samples, their images, and export."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import cv2
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParameter
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from leukoscreen.edge.fhir_export import fhir_export
from leukoscreen.edge.result_store import ResultStore
from leukoscreen.edge.web.dependencies import DaemonDep, StoreDep, body_within_limit, within_time
from leukoscreen.edge.web.schemas import (CaptureList, CaptureView, ExportRequest, IsoTime, SampleList,
                                          SampleSummary, SampleView, parse)

router = APIRouter(prefix="/api")
THUMBNAIL_WIDTH = 200
EXPORT_TYPES = {"zip": "application/zip", "csv": "text/csv", "json": "application/json",
                "fhir": "application/fhir+json", "ndjson": "application/fhir+ndjson"}


def _views(store: ResultStore, rows: list[dict]) -> list[CaptureView]:
    return [CaptureView.of(row, store.record(row)) for row in rows]


@router.get("/results", summary="Stored captures, newest first")
def results(store: StoreDep, limit: int = Query(50, ge=1, le=1000), sample_id: str | None = None,
            since: IsoTime | None = None, until: IsoTime | None = None) -> CaptureList:
    return CaptureList(captures=_views(store, store.captures(sample_id, since, until, limit)))


@router.get("/results/{capture_id}", summary="One stored capture")
def result(store: StoreDep, capture_id: int = PathParameter(ge=1, le=2**63 - 1)) -> CaptureView:
    row = store.capture(capture_id)
    if row is None:
        raise HTTPException(404, f"no capture {capture_id}")
    return CaptureView.of(row, store.record(row))


@router.get("/samples", summary="Samples, newest first, with their captures' decisions")
def samples(store: StoreDep, limit: int = Query(200, ge=1, le=5000)) -> SampleList:
    summaries = []
    for row in store.samples(limit):
        image = row.pop("last_image")
        summaries.append(SampleSummary(**row, thumbnail_url=f"/api/images/{image}?size=thumb" if image else None))
    return SampleList(samples=summaries)


@router.get("/samples/{sample_id}", summary="One sample and all its captures")
def sample(store: StoreDep, sample_id: str) -> SampleView:
    rows = store.captures(sample_id, limit=10_000)
    if not rows:
        raise HTTPException(404, f"no sample {sample_id!r}")
    return SampleView(sample_id=sample_id, captures=_views(store, rows))


@router.get("/images/{name}", summary="A stored field image (PNG), or a JPEG thumbnail with size=thumb",
            responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}})
def image(store: StoreDep, name: str, size: str = Query("full", pattern="^(full|thumb)$")) -> Response:
    try:
        path = store.image_path(name)
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


async def _export_request(request: Request) -> ExportRequest:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("application/json", ""):
        return parse(ExportRequest, body=await within_time(request.body()))
    if kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return parse(ExportRequest, dict(await within_time(request.form(max_files=0, max_fields=4))))
    raise HTTPException(415, f"content type {kind!r}: send JSON or a form with format, sample_id, since, until")


@router.post("/export", summary="Export captures (a sample, a date range or all) as zip, CSV, JSON or FHIR",
             description="Form or JSON fields: format (zip | csv | json | fhir), sample_id, since, until (ISO dates). "
                         "A zip holds CSV, JSON and the images and marks the captures exported; fhir gives FHIR R4 "
                         "Bundles, one per sample (JSON for one sample, else NDJSON); nothing is ever deleted.",
             dependencies=[Depends(body_within_limit)],
             openapi_extra={"requestBody": {"content": {
                 "application/json": {"schema": ExportRequest.model_json_schema()},
                 "application/x-www-form-urlencoded": {"schema": ExportRequest.model_json_schema()}}}},
             responses={200: {"content": {kind: {} for kind in EXPORT_TYPES.values()}}})
async def export(request: Request, store: StoreDep, daemon: DaemonDep) -> Response:
    asked = await _export_request(request)
    if asked.sample_id and not store.captures(asked.sample_id, limit=1):
        raise HTTPException(404, f"no sample {asked.sample_id!r}")
    extension = {"fhir": "fhir.json" if asked.sample_id else "fhir.ndjson"}.get(asked.format, asked.format)
    name = f"leukoscreen-{asked.sample_id or 'results'}-{time.strftime('%Y%m%d-%H%M%S')}.{extension}"
    headers = {"Content-Disposition": attachment(name)}
    if asked.format == "fhir":  # streamed: one sample's images in memory at a time
        return StreamingResponse(fhir_export(store, daemon.config.device_name, asked.sample_id, asked.since,
                                             asked.until), headers=headers,
                                 media_type=EXPORT_TYPES["fhir" if asked.sample_id else "ndjson"])
    if asked.format != "zip":
        rows = store.captures(asked.sample_id, asked.since, asked.until, limit=1_000_000)
        csv_text, json_text = store.tables(rows)
        return Response(csv_text if asked.format == "csv" else json_text, media_type=EXPORT_TYPES[asked.format],
                        headers=headers)
    folder = tempfile.mkdtemp(prefix=".export-", dir=store.root)
    try:
        await run_in_threadpool(store.export, Path(folder) / "export.zip", asked.sample_id, asked.since,
                                asked.until)
    except OSError as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise HTTPException(507, f"the export could not be written ({error.strerror or error}); free some space on "
                                 "the device and try again (nothing was marked exported)") from error
    return FileResponse(Path(folder) / "export.zip", media_type="application/zip", headers=headers,
                        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))


def attachment(name: str) -> str:
    """A Content-Disposition header for any file name (RFC 6266 and 5987): an ASCII fallback for old clients
    and the name itself, UTF-8 and percent-encoded."""
    fallback = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
