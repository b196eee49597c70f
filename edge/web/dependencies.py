"""What the routes are handed: the daemon, its result store, and the request-size rule."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request

from leukoscreen.edge.daemon import Daemon
from leukoscreen.edge.result_store import ResultStore

T = TypeVar("T")


def daemon(request: Request) -> Daemon:
    return request.app.state.daemon


def store(request: Request) -> ResultStore:
    return request.app.state.daemon.store


def announced_length(request: Request) -> int:
    """The body's Content-Length (0 when there is none); chunked bodies are refused."""
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        raise HTTPException(411, "send the request with a Content-Length (chunked bodies are not accepted)")
    try:
        return int(request.headers.get("content-length") or 0)
    except ValueError as error:
        raise HTTPException(400, "the Content-Length header is not a number") from error


def body_within_limit(request: Request) -> None:
    """Bodies are announced (no chunked uploads) and within the configured limit, before any is read."""
    limit_mb = request.app.state.daemon.config.max_upload_mb
    length = announced_length(request)
    if length > limit_mb * 1e6:
        raise HTTPException(413, f"the request is {length / 1e6:.1f} MB; the limit is {limit_mb:g} MB "
                                 "(max_upload_mb in the config)")


BODY_TIMEOUT_S = 30.0


async def within_time(reading: Awaitable[T], seconds: float | None = None) -> T:
    """A request body that does not arrive within `seconds` (default BODY_TIMEOUT_S) is answered 408 (a
    stalled or slow client does not hold the device)."""
    seconds = seconds or BODY_TIMEOUT_S
    try:
        return await asyncio.wait_for(reading, seconds)
    except asyncio.TimeoutError as error:
        raise HTTPException(408, f"the request body did not arrive within {seconds:g} s; send it again") from error


DaemonDep = Annotated[Daemon, Depends(daemon)]
StoreDep = Annotated[ResultStore, Depends(store)]
