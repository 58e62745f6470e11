"""Dispatching analyses and following their jobs."""

from __future__ import annotations

import uuid

from aiohttp import web

from service.ai.dispatch import (
    JOB_TYPES,
    DailyBudgetSpent,
    EntityMissing,
    IdempotencyKeyReused,
    NotAnalysable,
    RateLimited,
)
from service.api import parse, render, shapes
from service.api.auth import identity_of
from service.api.errors import ApiError, bad_request, not_found
from service.api.state import DISPATCHER, JOB_READS, JOBS, METRICS
from service.jobs.model import Job
from service.jobs.store import JobRead

routes = web.RouteTableDef()

# GET /api/ai-jobs?limit=
JOBS_LIMIT_DEFAULT = 50
JOBS_LIMIT_MAX = 500


def reader_scope(request: web.Request) -> dict[str, object] | None:
    """The JWT claims job reads are scoped to (row level security), or None for the service
    role, which sees every job."""
    identity = identity_of(request)
    if identity.sees_all:
        return None
    return {**identity.claims, "sub": identity.user_id, "role": identity.role}


async def visible_job(request: web.Request, job_id: uuid.UUID) -> Job:
    """The job, if the caller may see it; another user's job is as unknown as a missing one."""
    version = await request.app[JOB_READS].submit(JobRead(job_id, identity_of(request).read_scope))
    if version is None or version.job is None:
        raise not_found(f"Job {job_id} not found")
    return version.job


async def _dispatch(request: web.Request, job_type: str, what: str) -> web.Response:
    entity_id = parse.path_id(request, what=what)
    key = parse.idempotency_key(request)
    priority = await parse.dispatch_priority(request)
    try:
        job = await request.app[DISPATCHER].dispatch(
            job_type,
            entity_id,
            created_by=identity_of(request).user_id,
            idempotency_key=key,
            priority=priority,
        )
    except RateLimited as exc:
        raise ApiError(
            429, "too_many_requests", str(exc), {"Retry-After": str(exc.retry_after_s)}
        ) from None
    except DailyBudgetSpent as exc:
        raise ApiError(
            429, "budget_exhausted", str(exc), {"Retry-After": str(exc.retry_after_s)}
        ) from None
    except EntityMissing as exc:
        raise not_found(str(exc)) from None
    except NotAnalysable as exc:
        raise ApiError(422, "not_analysable", str(exc)) from None
    except IdempotencyKeyReused as exc:
        raise ApiError(422, "idempotency_key_reused", str(exc)) from None
    if job.created:
        request.app[METRICS].jobs_dispatched.labels(job_type).inc()
    body = render.dispatched_json(job)
    return render.json_response(body, 202, {"Location": f"/api/ai-jobs/{body['jobId']}"})


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
    """The job, with an ETag of its version: a poller's If-None-Match gets a 304 while nothing
    changed, decided by the database without reading the job, and a Retry-After while the
    job runs suggests how often to ask."""
    job_id = parse.path_uuid(request)
    known = render.known_job_tags(request)
    version = await request.app[JOB_READS].submit(
        JobRead(job_id, identity_of(request).read_scope, known)
    )
    if version is None:
        raise not_found(f"Job {job_id} not found")
    headers = {"ETag": render.job_etag(version.tag), "Cache-Control": "no-cache"}
    if not version.finished:
        headers["Retry-After"] = "1"
    if version.job is None:
        return web.Response(status=304, headers=headers)
    return render.json_response(render.job_json(version.job), 200, headers)


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
    if status is not None and status not in shapes.STATUSES:
        raise bad_request(f"'status' must be one of {', '.join(shapes.STATUSES)}", "invalid_query")
    job_type = request.query.get("jobType") or None
    if job_type is not None and job_type not in JOB_TYPES:
        raise bad_request(f"'jobType' must be one of {', '.join(JOB_TYPES)}", "invalid_query")
    entity_id = None
    if request.query.get("entityId"):
        entity_id = parse.query_int(request, "entityId", 0, 1, shapes.MAX_BIGINT)
    limit = parse.query_int(request, "limit", JOBS_LIMIT_DEFAULT, 1, JOBS_LIMIT_MAX)
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
