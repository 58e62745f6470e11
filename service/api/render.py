"""JSON bodies with camelCase keys."""

from __future__ import annotations

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
