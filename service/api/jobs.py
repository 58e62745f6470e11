"""Dispatching analyses and following their jobs."""

from __future__ import annotations

import hashlib

from aiohttp import web

from service.ai.dispatch import JOB_TYPES, EntityMissing, IdempotencyKeyReused, NotAnalysable
from service.api import parse, render
from service.api.errors import ApiError, bad_request, not_found
from service.api.state import DISPATCHER, JOBS, METRICS

routes = web.RouteTableDef()

STATUSES = ("pending", "processing", "completed", "failed")


async def _dispatch(request: web.Request, job_type: str, what: str) -> web.Response:
    entity_id = parse.path_id(request, what=what)
    key = parse.idempotency_key(request)
    try:
        job, created = await request.app[DISPATCHER].dispatch(
            job_type, entity_id, idempotency_key=key
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
    job_id = parse.path_uuid(request)
    job = await request.app[JOBS].get(job_id)
    if job is None:
        raise not_found(f"Job {job_id} not found")
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
    jobs = request.app[JOBS]
    job = await jobs.cancel(job_id)
    if job is None:
        finished = await jobs.get(job_id)
        if finished is None:
            raise not_found(f"Job {job_id} not found")
        raise ApiError(409, "job_finished", f"Job {job_id} has already {finished.status}")
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
    jobs = await request.app[JOBS].list_jobs(
        status=status, job_type=job_type, entity_id=entity_id, limit=limit
    )
    return render.json_response([render.job_json(j) for j in jobs])
