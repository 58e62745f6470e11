"""JSON bodies with camelCase keys."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from service.jobs.model import Job


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


# The version of job_json's output, part of every job's ETag: change it when a job's JSON
# changes shape, so that a client holding a rendering of the former code gets the new one.
JOB_JSON_VERSION = "2"
_TAG_PREFIX = f"j{JOB_JSON_VERSION}."
# A job's tag in the database: the row version's transaction id and updated_at.
_DB_TAG = re.compile(r"[0-9]+-[0-9]+")
# The usual If-None-Match of a poller: the one ETag it was given.
_ONE_TAG = re.compile(r'\s*(?:W/)?"' + re.escape(_TAG_PREFIX) + r'([0-9]+-[0-9]+)"\s*')


def job_etag(tag: str) -> str:
    """The ETag header of the version of a job whose database tag is `tag`."""
    return f'"{_TAG_PREFIX}{tag}"'


def known_job_tags(request: web.Request) -> tuple[str, ...]:
    """The database tags of the job versions the request's If-None-Match names ("*": any),
    compared as weak tags, as aiohttp parses them."""
    header = request.headers.get("If-None-Match")
    if not header:
        return ()
    one = _ONE_TAG.fullmatch(header)
    if one is not None:
        return (one[1],)
    known: list[str] = []
    for tag in request.if_none_match or ():
        if tag.value == "*":
            known.append("*")
        elif tag.value.startswith(_TAG_PREFIX) and _DB_TAG.fullmatch(tag.value[len(_TAG_PREFIX) :]):
            known.append(tag.value[len(_TAG_PREFIX) :])
    return tuple(known)


def job_json(job: Job) -> dict[str, Any]:
    progress = None
    if job.progress_total is not None or job.progress_current is not None:
        progress = {"current": job.progress_current, "total": job.progress_total}
    return {
        "id": str(job.id),
        "jobType": job.job_type,
        "entityId": job.entity_id,
        "status": job.status,
        "progressMessage": job.progress_message,
        "progress": progress,
        "result": job.result,
        "errorMessage": job.error_message,
        "attempts": job.attempts,
        "maxAttempts": job.max_attempts,
        "priority": job.priority,
        "runAfter": job.run_after,
        "startedAt": job.started_at,
        "finishedAt": job.finished_at,
        "createdAt": job.created_at,
        "updatedAt": job.updated_at,
    }


def requirement_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "code": row["code"],
        "title": row["title"],
        "description": row["description"],
        "coverageScore": row["coverage_score"],
        "coverageSummary": row["coverage_summary"],
        "coverageGaps": row["coverage_gaps"],
        "coverageDocuments": row["coverage_documents"],
        "coverageAnalyzedAt": row["coverage_analyzed_at"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
    }


def document_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "title": row["title"],
        "content": row["content"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
    }


def control_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "code": row["code"],
        "title": row["title"],
        "description": row["description"],
        "createdAt": row["created_at"],
    }


def mapping_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "requirementId": row["requirement_id"],
        "documentId": row["document_id"],
        "aiMatchScore": row["ai_match_score"],
        "aiMatchRationale": row["ai_match_rationale"],
        "aiMatchRecommendations": row["ai_match_recommendations"],
        "aiMatchedAt": row["ai_matched_at"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
    }


def document_control_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "controlId": row["control_id"],
        "code": row["code"],
        "title": row["title"],
        "confidence": row["confidence"],
        "rationale": row["rationale"],
        "jobId": str(row["job_id"]) if row["job_id"] else None,
        "createdAt": row["created_at"],
    }


def document_summary_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A document in a list: its content's length stands for the content."""
    return {
        "id": row["id"],
        "title": row["title"],
        "length": row["length"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
    }


def mapping_summary_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A mapping in a list, with what a person needs to recognise it."""
    return {
        **mapping_json(row),
        "requirementCode": row["requirement_code"],
        "requirementTitle": row["requirement_title"],
        "documentTitle": row["document_title"],
    }
