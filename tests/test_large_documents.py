"""A document too long for one request is split into overlapping sections, each analysed, and
the answers merged: nothing is truncated, nothing fails for being long."""

from __future__ import annotations

import re
from typing import Any

import pytest

from service.ai.analyzer import DocumentText
from service.ai.processors.coverage import merge as merge_coverage
from service.ai.processors.match import merge as merge_match
from service.ai.schemas import CoverageAssessment, DocumentScore, MatchAssessment
from service.ai.sections import pack_sections, split_document
from service.config import Settings
from service.entities.store import ControlInput, EntityStore
from service.jobs.store import JobStore
from tests.conftest import make_settings, wait_for_job
from tests.fake_anthropic import FakeAnthropic, request_text

PAGES = 400
SECTION = 160_000  # the default AIJOBS_SECTION_CHARS


def page(number: int) -> str:
    body = " ".join(
        f"Paragraph {p} of page {number} sets out how access to information is governed."
        for p in range(1, 9)
    )
    evidence = {
        20: "Removable media are encrypted (evidence MEDIA-20).",
        200: "Multi-factor authentication is required for remote access (evidence MFA-200).",
        350: "Backups are tested every quarter (evidence BACKUP-350).",
        390: "Removable media must be encrypted and logged (evidence MEDIA-390).",
    }.get(number, "")
    text = f"[page {number}]\n" + "\n\n".join([body] * 5)
    return f"{text}\n\n{evidence}\n" if evidence else text + "\n"


def long_document() -> str:
    return "\n".join(page(n) for n in range(1, PAGES + 1))


def pages_in(text: str) -> set[int]:
    return {int(n) for n in re.findall(r"\[page (\d+)\]", text)}


@pytest.fixture
def settings(dsn: str, fake: FakeAnthropic) -> Settings:
    # Room for a 1.2 MB document's calls at the fake's pace.
    return make_settings(dsn, fake.url, timeout_by_type={"ai-map-controls": 60.0})


# -- splitting --------------------------------------------------------------------------


def test_a_long_document_is_split_into_overlapping_sections_that_cover_it() -> None:
    content = long_document()
    assert 1_100_000 < len(content) < 1_400_000
    document = DocumentText(7, "Handbook", content)
    sections = split_document(document, SECTION, 4_000)
    assert len(sections) == 8
    assert [(s.section, s.sections) for s in sections] == [(i, 8) for i in range(1, 9)]
    assert all(len(s.content) <= SECTION for s in sections)
    assert all(s.id == 7 and s.title == "Handbook" for s in sections)
    # Every character is in some section; each section overlaps the one before it.
    position = 0
    for previous, section in zip([None, *sections], sections, strict=False):
        start = content.index(section.content, max(position - 5_000, 0))
        assert start <= position
        if previous is not None:
            overlap = position - start
            assert 0 < overlap <= 4_000
            assert section.content[0].isalnum() or section.content[0] == "["  # a clean start
        position = start + len(section.content)
    assert position == len(content)
    # Sections end at a paragraph break.
    assert all(s.content.endswith("\n\n") for s in sections[:-1])
    assert split_document(document, None, 4_000) == [document]
    assert split_document(document, len(content), 4_000) == [document]


def test_text_without_breaks_is_still_split() -> None:
    document = DocumentText(1, "Blob", "x" * 25_000)
    sections = split_document(document, 10_000, 1_000)
    assert [len(s.content) for s in sections] == [10_000, 10_000, 7_000]


def test_sections_of_several_documents_are_packed_into_requests() -> None:
    small = [DocumentText(i, f"D{i}", "y" * 30_000) for i in range(1, 5)]
    groups = pack_sections(small, 100_000)
    assert [[d.id for d in g] for g in groups] == [[1, 2, 3], [4]]
    assert pack_sections([], 100_000) == [[]]
    assert pack_sections(small, None) == [small]


def test_merging_takes_the_best_section_and_each_documents_best_score() -> None:
    match = merge_match(
        [
            (1, MatchAssessment(score=20, rationale="little", recommendations=["a"])),
            (2, MatchAssessment(score=85, rationale="MFA is required", recommendations=["b"])),
            (3, MatchAssessment(score=85, rationale="later", recommendations=["c"])),
        ]
    )
    assert match.score == 85
    assert "section 2" in match.rationale and "MFA is required" in match.rationale
    assert "section 1: 20" in match.rationale and "section 3: 85" in match.rationale
    assert match.recommendations == ["b"]
    coverage = merge_coverage(
        [
            CoverageAssessment(
                coverage_score=40,
                summary="part one",
                gaps=["x"],
                documents=[DocumentScore(document_id=1, score=40)],
            ),
            CoverageAssessment(
                coverage_score=70,
                summary="part two",
                gaps=["y"],
                documents=[
                    DocumentScore(document_id=1, score=10),
                    DocumentScore(document_id=2, score=70),
                ],
            ),
        ]
    )
    assert (coverage.coverage_score, coverage.gaps) == (70, ["y"])
    assert "part two" in coverage.summary
    assert {(d.document_id, d.score) for d in coverage.documents} == {(1, 40), (2, 70)}


# -- the jobs ----------------------------------------------------------------------------


def map_by_evidence(codes: dict[int, str]) -> Any:
    """Maps a control when its evidence marker is in the section; confidence by page."""

    def respond(body: dict[str, Any]) -> dict[str, Any]:
        text = request_text(body)
        shown = [int(i) for i in re.findall(r'<control id="(\d+)"', text)]
        found = []
        for control_id in shown:
            for match in re.finditer(rf"evidence {codes[control_id]}-(\d+)", text):
                found.append(
                    {
                        "control_id": control_id,
                        "confidence": 50 + int(match.group(1)) // 10,
                        "rationale": f"page {match.group(1)}",
                    }
                )
        return {"mapped_controls": found}

    return respond


async def test_a_400_page_document_maps_controls_section_by_section(
    worker: Any, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    content = long_document()
    doc = await entities.create_document("Handbook", content)
    rows = await entities.create_controls(
        [
            ControlInput("MEDIA", "Removable media", "Encrypt removable media"),
            ControlInput("MFA", "Remote access", "Require MFA for remote access"),
            ControlInput("BACKUP", "Backups", "Test backups"),
            ControlInput("LOGS", "Logging", "Keep audit logs"),
        ]
    )
    codes = {r["id"]: r["code"] for r in rows}
    fake.responder = map_by_evidence(codes)
    job = await wait_for_job(jobs, (await jobs.enqueue("ai-map-controls", doc["id"])).id, 60)
    assert job.status == "completed", job.error_message

    assert len(fake.requests) == 8  # eight sections, one batch of four controls each
    documents = [r.body["messages"][0]["content"][0]["text"] for r in fake.requests]
    assert all(len(d) < SECTION + 1_000 for d in documents)
    sections = sorted(int(re.search(r'section="(\d+) of 8"', d).group(1)) for d in documents)  # type: ignore[union-attr]
    assert sections == list(range(1, 9))
    assert set().union(*(pages_in(d) for d in documents)) == set(range(1, PAGES + 1))
    # Merged: each control at its best confidence across sections; LOGS nowhere.
    mapped = {codes[c["controlId"]]: c for c in job.result["mappedControls"]}
    assert set(mapped) == {"MEDIA", "MFA", "BACKUP"}
    assert (mapped["MEDIA"]["confidence"], mapped["MEDIA"]["rationale"]) == (89, "page 390")
    assert mapped["BACKUP"]["confidence"] == 85
    assert (job.result["batches"], job.result["sections"]) == (1, 8)
    assert job.result["usage"]["calls"] == 8
    stored = await entities.document_controls(doc["id"])
    assert {r["control_id"] for r in stored} == {
        c["controlId"] for c in job.result["mappedControls"]
    }


async def test_a_400_page_document_is_matched_section_by_section(
    worker: Any, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    requirement = await entities.create_requirement("AC-7", "Remote access", "Require MFA")
    doc = await entities.create_document("Handbook", long_document())
    mapping = await entities.create_mapping(requirement["id"], doc["id"])

    def by_section(body: dict[str, Any]) -> dict[str, Any]:
        text = request_text(body)
        section = re.search(r'section="(\d+) of', text)
        assert section is not None and "one section of a longer document" in text
        score = 90 if "MFA-200" in text else 10
        return {
            "score": score,
            "rationale": f"section {section.group(1)} scores {score}",
            "recommendations": [f"from section {section.group(1)}"],
        }

    fake.responder = by_section
    job = await wait_for_job(jobs, (await jobs.enqueue("ai-match", mapping["id"])).id, 60)
    assert job.status == "completed", job.error_message
    assert len(fake.requests) == 8
    best = [r for r in fake.requests if "MFA-200" in request_text(r.body)]
    assert len(best) == 1
    number = re.search(r'section="(\d+) of', request_text(best[0].body)).group(1)  # type: ignore[union-attr]
    assert job.result["aiMatchScore"] == 90
    assert f"section {number} satisfies the requirement best" in job.result["aiMatchRationale"]
    assert job.result["aiMatchRecommendations"] == [f"from section {number}"]
    assert job.result["sections"] == 8
    row = await entities.get_mapping(mapping["id"])
    assert row is not None and row["ai_match_score"] == 90
