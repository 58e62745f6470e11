"""The sample data set of the demo: an ISMS standard, four policies, a control catalogue."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from service.entities.store import ControlInput, EntityStore


@dataclass(frozen=True)
class SampleIds:
    requirements: dict[str, int]
    documents: dict[str, int]
    mappings: list[int]
    controls: int


def sample_data() -> dict[str, Any]:
    text = resources.files("service.data").joinpath("sample.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


async def load_sample(entities: EntityStore) -> SampleIds:
    """Insert what of the sample is not there yet; safe to run again."""
    data = sample_data()
    requirements: dict[str, int] = {}
    for r in data["requirements"]:
        row = await entities.find_requirement_by_code(r["code"])
        if row is None:
            row = await entities.create_requirement(r["code"], r["title"], r["description"])
        requirements[r["code"]] = row["id"]
    documents: dict[str, int] = {}
    for d in data["documents"]:
        row = await entities.find_document_by_title(d["title"])
        if row is None:
            row = await entities.create_document(d["title"], d["content"])
        documents[d["key"]] = row["id"]
    existing = await entities.existing_control_codes([c["code"] for c in data["controls"]])
    missing = [
        ControlInput(c["code"], c["title"], c["description"])
        for c in data["controls"]
        if c["code"] not in existing
    ]
    if missing:
        await entities.create_controls(missing)
    mappings: list[int] = []
    for m in data["mappings"]:
        req_id, doc_id = requirements[m["requirement"]], documents[m["document"]]
        row = await entities.find_mapping(req_id, doc_id)
        if row is None:
            row = await entities.create_mapping(req_id, doc_id)
        mappings.append(row["id"])
    return SampleIds(requirements, documents, mappings, len(data["controls"]))
