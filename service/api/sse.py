"""Following a job as server-sent events: its state, then each change, until it finishes."""

from __future__ import annotations

import orjson
from aiohttp import web

from service.api import parse, render, shapes
from service.api.auth import identity_of
from service.api.errors import ApiError, bad_request, not_found
from service.api.jobs import visible_job
from service.api.state import EVENT_HUB, OPEN_STREAMS, SETTINGS
from service.jobs.events import Idle
from service.jobs.model import Job
from service.jobs.text import TextPiece

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
_RETRY = b"retry: %d\n\n" % RETRY_MS


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
    if not raw.isascii() or not raw.isdigit() or int(raw) > shapes.MAX_BIGINT:
        raise bad_request(
            f"Last-Event-ID must be an event id from this stream, got {raw!r}", "invalid_event_id"
        )
    return int(raw)


def delta_frame(piece: TextPiece) -> bytes:
    """One SSE event carrying text the job's model wrote: ephemeral, so without an id (a
    client resuming with Last-Event-ID resumes the job events only)."""
    return b"event: delta\ndata: %s\n\n" % orjson.dumps(piece.as_json())


# No HEAD: it would hold a connection open for a stream it never reads.
@routes.get("/api/ai-jobs/{jobId}/events", allow_head=False)
async def job_events(request: web.Request) -> web.StreamResponse:
    """The job's current state, then every change, until it is completed or failed.

    With `Last-Event-ID` (or `?lastEventId=`), exactly the changes after that event instead
    of the current state. Errors are answered as JSON before the stream starts.

    An open stream costs the process what this coroutine holds while it waits, so the whole
    stream is this one coroutine (no helpers awaited for its lifetime), it keeps no job once
    the job is written, and it waits on its subscription's future alone: keepalives come
    from the hub's shared idle clock, not from a timer per stream.
    """
    job_id = parse.path_uuid(request)
    resume = _resume_after(request)
    await visible_job(request, job_id)
    hub = request.app[EVENT_HUB]
    snapshot = await hub.store.snapshot(job_id)
    if snapshot is None:
        raise not_found(f"Job {job_id} not found")
    seq = snapshot.seq or 0
    finished = snapshot.job.finished
    if resume is not None and resume > seq:
        resume = None  # not an id of this job's stream: start over from the current state
    if resume is not None and finished and resume >= seq:
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
    # The stream opens with the retry advice, then the current state unless it resumes.
    opening = _RETRY if resume is not None else _RETRY + frame(seq, snapshot.job)
    del snapshot
    streams[user_id] += 1
    try:
        response = web.StreamResponse(headers=_HEADERS)
        await response.prepare(request)
        try:
            await response.write(opening)
            del opening
            if resume is None:
                if finished:
                    return response
                resume = seq
            sub = hub.subscribe(
                job_id, resume, idle_s=request.app[SETTINGS].sse_heartbeat_s, text=True
            )
            try:
                while True:
                    item = sub.poll()
                    if item is None:
                        if sub.closed:
                            break  # shutting down: the client reconnects, to this or another
                        await sub.wait()
                    elif isinstance(item, TextPiece):
                        await response.write(delta_frame(item))
                    elif item is Idle.IDLE:
                        # Keeps proxies from closing an idle stream, and finds a departed client.
                        await response.write(_KEEPALIVE)
                    else:
                        await response.write(frame(item.seq, item.job))
                        if item.terminal:
                            break
            finally:
                hub.unsubscribe(sub)
        except ConnectionError:
            pass  # the client went away
        return response
    finally:
        streams[user_id] -= 1
        if not streams[user_id]:
            del streams[user_id]
