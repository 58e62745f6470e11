"""Dispatching analyses and following their jobs."""

from __future__ import annotations

import hashlib
import uuid

from aiohttp import web

from service.ai.dispatch import JOB_TYPES, EntityMissing, IdempotencyKeyReused, NotAnalysable
from service.api import parse, render
from service.api.auth import identity_of
from service.api.errors import ApiError, bad_request, not_found
from service.api.state import DISPATCHER, JOBS, METRICS, SETTINGS
from service.jobs.model import Job

routes = web.RouteTableDef()

STATUSES = ("pending", "processing", "completed", "failed")


def reader_scope(request: web.Request) -> dict[str, object] | None:
    """The JWT claims job reads are scoped to (row level security), or None for the service
    role, which sees every job."""
    identity = identity_of(request)
    if identity.sees_all:
        return None
    return {**identity.claims, "sub": identity.user_id, "role": identity.role}


async def visible_job(request: web.Request, job_id: uuid.UUID) -> Job:
    """The job, if the caller may see it; another user's job is as unknown as a missing one."""
    async with request.app[JOBS].reader(reader_scope(request)) as reader:
        job = await reader.get(job_id)
    if job is None:
        raise not_found(f"Job {job_id} not found")
    return job


async def _check_dispatch_rate(request: web.Request, user_id: str) -> None:
    limit = request.app[SETTINGS].dispatch_per_minute
    if limit <= 0:
        return
    count, frees_in_s = await request.app[JOBS].recent_jobs_of(user_id, 60)
    if count >= limit:
        raise ApiError(
            429,
            "too_many_requests",
            f"At most {limit} dispatches a minute; try again in {frees_in_s} s",
            {"Retry-After": str(frees_in_s)},
        )


async def _dispatch(request: web.Request, job_type: str, what: str) -> web.Response:
    entity_id = parse.path_id(request, what=what)
    key = parse.idempotency_key(request)
    user_id = identity_of(request).user_id
    await _check_dispatch_rate(request, user_id)
    try:
        job, created = await request.app[DISPATCHER].dispatch(
            job_type, entity_id, created_by=user_id, idempotency_key=key
        )
    except EntityMissing as exc:
        raise not_found(str(exc)) from None
    except NotAnalysable as exc:
        raise ApiError(422, "not_analysable", str(exc)) from None
    except IdempotencyKeyReused as exc:
        raise ApiError(422, "idempotency_key_reused", str(exc)) from None
    if created:
        request.app[METRICS].jobs_dispatched.labels(job_type).inc()
    location = f"/api/ai-jobs/{job.id}"
    return render.json_response(
        {"jobId": str(job.id), "status": job.status}, 202, {"Location": location}
    )


@routes.post("/api/gap-analysis/ai-match/{id}")
async def dispatch_match(request: web.Request) -> web.Response:
    return await _dispatch(request, "ai-match", "mapping id")


@routes.post("/api/requirements/{id}/ai-coverage")
async def dispatch_coverage(request: web.Request) -> web.Response:
    return await _dispatch(request, "ai-coverage", "requirement id")


@routes.post("/api/documents/{id}/ai-map-controls")
async def dispatch_map_controls(request: web.Request) -> web.Response:
    return await _dispatch(request, "ai-map-controls", "document id")


@routes.get("/api/ai-jobs/{jobId}")
async def get_job(request: web.Request) -> web.Response:
    """The job, with an ETag of its body: a poller's If-None-Match gets a 304 while nothing
    changed, and a Retry-After while the job runs suggests how often to ask."""
    job = await visible_job(request, parse.path_uuid(request))
    response = render.json_response(render.job_json(job))
    assert isinstance(response.body, bytes)
    etag = hashlib.blake2b(response.body, digest_size=16).hexdigest()
    if any(tag.value in ("*", etag) for tag in request.if_none_match or ()):
        response = web.Response(status=304)
    response.etag = etag
    response.headers["Cache-Control"] = "no-cache"
    if not job.finished:
        response.headers["Retry-After"] = "1"
    return response


@routes.post("/api/ai-jobs/{jobId}/cancel")
async def cancel_job(request: web.Request) -> web.Response:
    job_id = parse.path_uuid(request)
    visible = await visible_job(request, job_id)
    job = await request.app[JOBS].cancel(job_id)
    if job is None:
        raise ApiError(409, "job_finished", f"Job {job_id} has already {visible.status}")
    return render.json_response(render.job_json(job))


@routes.get("/api/ai-jobs")
async def list_jobs(request: web.Request) -> web.Response:
    status = request.query.get("status") or None
    if status is not None and status not in STATUSES:
        raise bad_request(f"'status' must be one of {', '.join(STATUSES)}", "invalid_query")
    job_type = request.query.get("jobType") or None
    if job_type is not None and job_type not in JOB_TYPES:
        raise bad_request(f"'jobType' must be one of {', '.join(JOB_TYPES)}", "invalid_query")
    entity_id = None
    if request.query.get("entityId"):
        entity_id = parse.query_int(request, "entityId", 0, 1, parse.MAX_BIGINT)
    limit = parse.query_int(request, "limit", 50, 1, 500)
    identity = identity_of(request)
    async with request.app[JOBS].reader(reader_scope(request)) as reader:
        jobs = await reader.list_jobs(
            status=status,
            job_type=job_type,
            entity_id=entity_id,
            # Row level security already limits a user to their own jobs; this says so twice.
            created_by=None if identity.sees_all else identity.user_id,
            limit=limit,
        )
    return render.json_response([render.job_json(j) for j in jobs])
