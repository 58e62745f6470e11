"""JSON bodies with camelCase keys: each answer's keys are its shape's (service/api/shapes.py),
its values the row's or the job's, written by orjson."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any, get_args

import orjson
from aiohttp import web

from service.ai.dispatch import Dispatched
from service.ai.processors import partial_result
from service.api import shapes
from service.api.shapes import Shape
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
JOB_JSON_VERSION = "3"
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


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _renderer(
    shape: type[Shape], read: str, made: Mapping[str, Callable[[Any], Any]] | None = None
) -> Callable[[Any], dict[str, Any]]:
    """A function of one argument, `item`, that returns the JSON of `shape` with each field
    read as `read` says ("item[{name!r}]" from a row, "item.{name}" from an object) or, for
    a field `made` of others, by its function. UUIDs are written as text (orjson takes
    uuid.UUID but not asyncpg's own).

    The function is compiled from the shape, a dict display as a hand-written one would be:
    the job's is on the path of every poll and of every event of a stream."""
    namespace: dict[str, Any] = {"_text": _text, "str": str}
    entries = []
    for name, field in shape.model_fields.items():
        value = read.format(name=name)
        if made and name in made:
            namespace[f"_made_{name}"] = made[name]
            value = f"_made_{name}(item)"
        elif field.annotation is uuid.UUID:
            value = f"str({value})"
        elif uuid.UUID in get_args(field.annotation):
            value = f"_text({value})"
        entries.append(f"{field.alias or name!r}: {value}")
    source = f"def render(item):\n    return {{{', '.join(entries)}}}\n"
    exec(compile(source, f"<renderer of {shape.__name__}>", "exec"), namespace)
    return namespace["render"]  # type: ignore[no-any-return]


def row_renderer(shape: type[Shape]) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """The JSON of a database row as `shape`: its fields, in order, read by name."""
    return _renderer(shape, "item[{name!r}]")


def object_renderer(
    shape: type[Shape], made: Mapping[str, Callable[[Any], Any]] | None = None
) -> Callable[[Any], dict[str, Any]]:
    """The JSON of an object as `shape`: its fields, in order, read as attributes, but for
    those `made` of others."""
    return _renderer(shape, "item.{name}", made)


def _progress(job: Job) -> dict[str, Any] | None:
    if job.progress_total is None and job.progress_current is None:
        return None
    return {"current": job.progress_current, "total": job.progress_total}


def _partial_result(job: Job) -> dict[str, Any] | None:
    """What a running job has found so far; null once it has its result."""
    if job.result is not None or job.checkpoint is None:
        return None
    return partial_result(job.job_type, job.checkpoint)


job_json: Callable[[Job], dict[str, Any]] = object_renderer(
    shapes.Job, {"progress": _progress, "partial_result": _partial_result}
)
dispatched_json: Callable[[Dispatched], dict[str, Any]] = object_renderer(shapes.Dispatched)
requirement_json = row_renderer(shapes.Requirement)
document_json = row_renderer(shapes.Document)
control_json = row_renderer(shapes.Control)
mapping_json = row_renderer(shapes.Mapping)
document_control_json = row_renderer(shapes.DocumentControl)
# In a list, a document's content's length stands for the content.
document_summary_json = row_renderer(shapes.DocumentSummary)
# In a list, a mapping comes with what a person needs to recognise it.
mapping_summary_json = row_renderer(shapes.MappingSummary)
session_json = row_renderer(shapes.Session)
