"""Following a job as server-sent events: its state, then each change, until it finishes."""

from __future__ import annotations

import asyncio
import uuid

import orjson
from aiohttp import web

from service.api import parse, render
from service.api.auth import identity_of
from service.api.errors import ApiError, bad_request, not_found
from service.api.jobs import visible_job
from service.api.state import EVENT_HUB, OPEN_STREAMS, SETTINGS
from service.jobs.events import EventHub
from service.jobs.model import Job

routes = web.RouteTableDef()

# How long a disconnected EventSource waits before it reconnects (with Last-Event-ID).
RETRY_MS = 2000

_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # A buffering proxy (nginx) would hold events back until its buffer fills.
    "X-Accel-Buffering": "no",
}
_KEEPALIVE = b": keepalive\n\n"


def frame(seq: int, job: Job) -> bytes:
    """One SSE event carrying the job."""
    data = orjson.dumps(render.job_json(job))
    return b"event: job\nid: %d\ndata: %s\n\n" % (seq, data)


def _resume_after(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        raw = request.query.get("lastEventId")
    if raw is None or not raw.strip():
        return None
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or int(raw) > parse.MAX_BIGINT:
        raise bad_request(
            f"Last-Event-ID must be an event id from this stream, got {raw!r}", "invalid_event_id"
        )
    return int(raw)


# No HEAD: it would hold a connection open for a stream it never reads.
@routes.get("/api/ai-jobs/{jobId}/events", allow_head=False)
async def job_events(request: web.Request) -> web.StreamResponse:
    """The job's current state, then every change, until it is completed or failed.

    With `Last-Event-ID` (or `?lastEventId=`), exactly the changes after that event instead
    of the current state. Errors are answered as JSON before the stream starts.
    """
    job_id = parse.path_uuid(request)
    resume = _resume_after(request)
    await visible_job(request, job_id)
    hub = request.app[EVENT_HUB]
    snapshot = await hub.store.snapshot(job_id)
    if snapshot is None:
        raise not_found(f"Job {job_id} not found")
    seq = snapshot.seq or 0
    if resume is not None and resume > seq:
        resume = None  # not an id of this job's stream: start over from the current state
    if resume is not None and snapshot.job.finished and resume >= seq:
        # The client has had everything; 204 is how SSE tells EventSource to stop reconnecting.
        return web.Response(status=204)

    user_id = identity_of(request).user_id
    streams = request.app[OPEN_STREAMS]
    limit = request.app[SETTINGS].sse_streams_per_user
    if limit and streams[user_id] >= limit:
        raise ApiError(
            429,
            "too_many_streams",
            f"At most {limit} open event streams per user; close one first",
            {"Retry-After": str(RETRY_MS // 1000)},
        )
    streams[user_id] += 1
    try:
        return await _stream(request, hub, job_id, snapshot.job, seq, resume)
    finally:
        streams[user_id] -= 1
        if not streams[user_id]:
            del streams[user_id]


async def _stream(
    request: web.Request,
    hub: EventHub,
    job_id: uuid.UUID,
    job: Job,
    seq: int,
    resume: int | None,
) -> web.StreamResponse:
    response = web.StreamResponse(headers=_HEADERS)
    await response.prepare(request)
    try:
        await response.write(b"retry: %d\n\n" % RETRY_MS)
        if resume is None:
            await response.write(frame(seq, job))
            if job.finished:
                return response
            resume = seq
        await _follow(response, hub, job_id, resume, request.app[SETTINGS].sse_heartbeat_s)
    except ConnectionError:
        pass  # the client went away
    return response


async def _follow(
    response: web.StreamResponse,
    hub: EventHub,
    job_id: uuid.UUID,
    after_seq: int,
    heartbeat_s: float,
) -> None:
    with hub.subscription(job_id, after_seq) as sub:
        while True:
            try:
                async with asyncio.timeout(heartbeat_s):
                    event = await sub.next()
            except TimeoutError:
                # Keeps proxies from closing an idle stream, and finds a departed client.
                await response.write(_KEEPALIVE)
                continue
            if event is None:
                return  # shutting down: the client reconnects, to this or another process
            await response.write(frame(event.seq, event.job))
            if event.terminal:
                return
