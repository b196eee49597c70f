"""Installing a model bundle over the API: the zip of a bundle, checked and made current as by `leukoscreen bundle
install` (edge/bundle_install.py), then loaded by the running device. Only on a device with an access token."""
from __future__ import annotations

import os
import tempfile

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from leukoscreen.edge.bundle_install import bundles_dir, install_bundle
from leukoscreen.edge.web.dependencies import DaemonDep, announced_length, within_time

router = APIRouter(prefix="/api")
MAX_BUNDLE_MB = 1024
ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/octet-stream")
UPLOAD_TIMEOUT_S = 600.0


class BundleInstalled(BaseModel):
    model_config = ConfigDict(frozen=True)
    installed: str      # the folder under STATE/bundles
    running: str        # the deciding bundle after the reload
    message: str


def _length(request: Request) -> int:
    length = announced_length(request)
    if not 0 < length <= MAX_BUNDLE_MB * 1e6:
        raise HTTPException(413 if length else 400, f"a bundle zip of 1 byte to {MAX_BUNDLE_MB} MB is expected; "
                                                    f"this request has {length / 1e6:.1f} MB")
    return length


async def _receive(request: Request, path: str) -> None:
    async def copy():
        with open(path, "wb") as handle:
            async for chunk in request.stream():
                handle.write(chunk)
    await within_time(copy(), UPLOAD_TIMEOUT_S)


@router.post("/bundle", summary="Install a model bundle (a zip of the bundle folder) and run it",
             description="The body is the zip (Content-Type application/zip or application/octet-stream). It is checked as `leukoscreen bundle "
                         "install` checks it (every file's hash, the signature when the device has trusted_keys, "
                         "the self-test), made current (the previous bundle is kept: `leukoscreen bundle rollback`) "
                         "and loaded. Needs the access token; a device without one refuses (403).",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
             responses={403: {"description": "the device has no access token"},
                        422: {"description": "the bundle failed a check; nothing was changed"},
                        507: {"description": "not enough disk space"}})
async def install(request: Request, daemon: DaemonDep) -> BundleInstalled:
    if not daemon.config.access_token:
        raise HTTPException(403, "installing a bundle over the API needs the device's access token: set "
                                 "access_token in its config, or run `leukoscreen bundle install` on the device")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ZIP_TYPES:
        raise HTTPException(415, f"content type {kind!r}: send the bundle as application/zip")
    _length(request)
    folder = bundles_dir(daemon.config.state_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, path = tempfile.mkstemp(prefix=".upload-", suffix=".zip", dir=folder)
        os.close(handle)
    except OSError as error:
        raise HTTPException(507, f"the bundle cannot be stored ({error.strerror})") from error
    try:
        try:
            await _receive(request, path)
        except OSError as error:
            raise HTTPException(507, f"the bundle cannot be stored ({error.strerror}); free some space") from error
        try:
            installed = await run_in_threadpool(install_bundle, path, daemon.config, "the uploaded bundle")
        except OSError as error:
            raise HTTPException(507, f"the bundle cannot be installed ({error.strerror}); free some space") from error
        except ValueError as error:   # BundleError, RuntimeProblem, SigningError: nothing was changed
            raise HTTPException(422, f"bundle refused, nothing changed: {error}") from error
    finally:
        os.unlink(path)
    daemon.store.audit("bundle_installed", {"folder": installed.name})
    reloaded = await run_in_threadpool(daemon.reload)
    running = daemon.models.deciding.title
    if daemon.config.bundle:
        message = (f"installed; the config names bundle = {daemon.config.bundle!r}, which keeps running (empty it to "
                   "run the installed bundle)")
    else:
        message = f"installed and running {running}" if reloaded else f"installed, but {daemon.status.message}"
    return BundleInstalled(installed=installed.name, running=running, message=message)
