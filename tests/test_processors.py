"""Each analysis, run by a real worker against the fake Claude, and its effect on the rows."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from service.entities.store import EntityStore
from service.jobs.store import JobStore
from tests.conftest import seed_controls, wait_for_job
from tests.fake_anthropic import Delay, FakeAnthropic, Malformed, Refusal, Reply, request_text
from tests.test_api_jobs import make_mapping
from tests.test_claude_budget import counting_pool

Client = TestClient[Any, Any]


async def dispatch(client: Client, path: str) -> str:
    response = await client.post(path)
    assert response.status == 202, await response.text()
    job_id: str = (await response.json())["jobId"]
    return job_id


async def test_ai_match_writes_the_mapping(
    client: Client, worker: Any, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    mapping = await make_mapping(entities)
    fake.enqueue(
        Reply(tool_input={"score": 72, "rationale": "MFA and reviews", "recommendations": ["Log"]})
    )
    job = await wait_for_job(
        jobs, await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    )
    assert job.status == "completed", job.error_message
    assert job.result["aiMatchScore"] == 72
    assert job.result["analyzer"] == "claude"
    assert job.attempts == 1
    row = await entities.get_mapping(mapping["id"])
    assert row is not None
    assert (row["ai_match_score"], row["ai_match_rationale"]) == (72, "MFA and reviews")
    assert row["ai_match_recommendations"] == ["Log"]
    # The prompt carried the requirement and the document, and forced the tool.
    body = fake.requests[0].body
    assert "Review access quarterly" in request_text(body)
    assert "least privilege" in request_text(body)
    assert body["tool_choice"] == {"type": "tool", "name": "record_match_assessment"}
    response = await client.get(f"/api/gap-analysis/mappings/{mapping['id']}")
    assert (await response.json())["aiMatchScore"] == 72


async def test_ai_coverage_writes_the_requirement(
    client: Client, worker: Any, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    mapping = await make_mapping(entities)
    other = await entities.create_document("Second", "Quarterly access review records kept.")
    await entities.create_mapping(mapping["requirement_id"], other["id"])
    fake.enqueue(
        Reply(
            tool_input={
                "coverage_score": 64,
                "summary": "Mostly covered",
                "gaps": ["No evidence retention"],
                "documents": [
                    {"document_id": mapping["document_id"], "score": 70},
                    {"document_id": other["id"], "score": 40},
                    {"document_id": 987654, "score": 99},
                ],
            }
        )
    )
    path = f"/api/requirements/{mapping['requirement_id']}/ai-coverage"
    job = await wait_for_job(jobs, await dispatch(client, path))
    assert job.status == "completed", job.error_message
    assert job.result["coverageScore"] == 64
    # A document id the model invented is dropped.
    assert job.result["documents"] == [
        {"documentId": mapping["document_id"], "score": 70},
        {"documentId": other["id"], "score": 40},
    ]
    requirement = await entities.get_requirement(mapping["requirement_id"])
    assert requirement is not None
    assert requirement["coverage_score"] == 64
    assert requirement["coverage_gaps"] == ["No evidence retention"]
    assert "Second" in request_text(fake.requests[0].body)


def controls_in(body: dict[str, Any]) -> list[int]:
    return [int(i) for i in re.findall(r'<control id="(\d+)"', request_text(body))]


async def test_ai_map_controls_runs_in_batches_with_progress(
    client: Client,
    worker: Any,
    entities: EntityStore,
    jobs: JobStore,
    fake: FakeAnthropic,
    pool: asyncpg.Pool,
) -> None:
    doc = await entities.create_document("Policy", "Access reviews happen quarterly.")
    await seed_controls(entities, 60)  # 25 + 25 + 10

    def every_third(body: dict[str, Any]) -> dict[str, Any]:
        shown = controls_in(body)
        return {
            "mapped_controls": [
                {"control_id": c, "confidence": 80, "rationale": f"covers {c}"}
                for c in shown
                if c % 3 == 0
            ]
            + [{"control_id": 100000, "confidence": 90, "rationale": "not shown"}]
        }

    fake.responder = every_third
    # The two batches that run at once finish apart, so that a poller sees each.
    fake.enqueue(Delay(0.4), Delay(0.4), Delay(0.8))
    job_id = await dispatch(client, f"/api/documents/{doc['id']}/ai-map-controls")
    seen: list[tuple[str, Any]] = []
    while True:
        job = await (await client.get(f"/api/ai-jobs/{job_id}")).json()
        state = (job["progressMessage"], job["progress"])
        if job["status"] == "processing" and (not seen or seen[-1] != state):
            seen.append(state)
        if job["status"] in ("completed", "failed"):
            break
    assert job["status"] == "completed", job["errorMessage"]
    assert seen[0] == ("Starting...", None) or seen[0][0].startswith("Analyzing batch 1")
    # Each batch is announced as it starts; the count is of finished batches. Batches 2 and 3
    # start together once batch 1 has written the prompt cache. A poller sees some of these
    # states, in this order, and the slow ones (a batch being analysed) for sure.
    expected = [
        ("Analyzing batch 1 of 3...", {"current": 0, "total": 3}),
        ("Analyzed 1 of 3 batches", {"current": 1, "total": 3}),
        ("Analyzing batch 2 of 3...", {"current": 1, "total": 3}),
        ("Analyzing batch 3 of 3... (1 of 3 done)", {"current": 1, "total": 3}),
        ("Analyzed 2 of 3 batches", {"current": 2, "total": 3}),
        ("Analyzed 3 of 3 batches", {"current": 3, "total": 3}),
    ]
    polled = [s for s in seen if s[0] != "Starting..."]
    remaining = iter(expected)
    assert all(state in remaining for state in polled), polled
    assert expected[0] in polled and expected[3] in polled
    assert job["progress"] == {"current": 3, "total": 3}
    sizes = [len(controls_in(r.body)) for r in fake.requests]
    assert sizes[0] == 25 and sorted(sizes[1:]) == [10, 25]
    mapped = {c["controlId"] for c in job["result"]["mappedControls"]}
    all_ids = [r["id"] for r in await entities.list_controls()]
    assert mapped == {c for c in all_ids if c % 3 == 0}
    assert job["result"]["batches"] == 3
    assert job["progressMessage"] == f"Mapped {len(mapped)} controls in 3 batches"
    rows = await pool.fetch(
        "SELECT control_id, job_id FROM document_control_mappings WHERE document_id = $1", doc["id"]
    )
    assert {r["control_id"] for r in rows} == mapped
    assert {str(r["job_id"]) for r in rows} == {job_id}
    listed = await (await client.get(f"/api/documents/{doc['id']}/controls")).json()
    assert {c["controlId"] for c in listed} == mapped
    # Each batch's request leads with the same document block, marked for the prompt cache.
    first_blocks = [r.body["messages"][0]["content"][0] for r in fake.requests]
    assert all(b == first_blocks[0] for b in first_blocks)
    assert first_blocks[0]["cache_control"] == {"type": "ephemeral"}


async def test_invalid_output_twice_fails_and_leaves_the_entity_untouched(
    client: Client, worker: Any, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    mapping = await make_mapping(entities)
    fake.enqueue(Malformed("wrong_type"), Malformed("missing_field"))
    job = await wait_for_job(
        jobs, await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    )
    assert job.status == "failed"
    assert job.error_message is not None
    assert "invalid output" in job.error_message
    assert job.attempts == 1
    assert len(fake.requests) == 2
    # The corrective retry told the model what was wrong.
    assert fake.requests[1].body["messages"][-1]["content"][0]["is_error"] is True
    row = await entities.get_mapping(mapping["id"])
    assert row is not None and row["ai_match_score"] is None and row["ai_matched_at"] is None


def assert_corrected_once_then_failed(job: Any, fake: FakeAnthropic) -> None:
    assert job.status == "failed", job.result
    assert job.error_message is not None and "invalid output" in job.error_message
    assert job.attempts == 1
    assert len(fake.requests) == 2
    # The one corrective retry told the model what was wrong.
    assert fake.requests[1].body["messages"][-1]["content"][0]["is_error"] is True


async def test_ai_match_answer_without_its_lists_or_with_wrong_types_fails(
    client: Client, worker: Any, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    mapping = await make_mapping(entities)
    fake.enqueue(
        Reply(tool_input={"score": 72, "rationale": "MFA"}),  # no recommendations
        Reply(tool_input={"score": "72", "rationale": "MFA", "recommendations": "Log"}),
    )
    job = await wait_for_job(
        jobs, await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    )
    assert_corrected_once_then_failed(job, fake)
    row = await entities.get_mapping(mapping["id"])
    assert row is not None and row["ai_match_score"] is None and row["ai_matched_at"] is None


async def test_ai_coverage_answer_without_its_lists_or_with_wrong_types_fails(
    client: Client, worker: Any, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    mapping = await make_mapping(entities)
    fake.enqueue(
        Reply(tool_input={"coverage_score": 64, "summary": "Mostly"}),  # no gaps, no documents
        Reply(
            tool_input={
                "coverage_score": 64,
                "summary": "Mostly",
                "gaps": [],
                "documents": [{"document_id": str(mapping["document_id"]), "score": 70}],
            }
        ),
    )
    path = f"/api/requirements/{mapping['requirement_id']}/ai-coverage"
    job = await wait_for_job(jobs, await dispatch(client, path))
    assert_corrected_once_then_failed(job, fake)
    requirement = await entities.get_requirement(mapping["requirement_id"])
    assert requirement is not None
    assert requirement["coverage_score"] is None and requirement["coverage_gaps"] is None


async def test_ai_map_controls_answer_without_its_list_fails_and_keeps_the_mappings(
    client: Client, worker: Any, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    doc = await entities.create_document("Policy", "Access reviews happen quarterly.")
    controls = await seed_controls(entities, 3)
    first = {"control_id": controls[0]["id"], "confidence": 80, "rationale": "reviews"}
    fake.enqueue(Reply(tool_input={"mapped_controls": [first]}))
    path = f"/api/documents/{doc['id']}/ai-map-controls"
    done = await wait_for_job(jobs, await dispatch(client, path))
    assert done.status == "completed", done.error_message
    assert done.progress_message == "Mapped 1 control in 1 batch"
    before = await entities.document_controls(doc["id"])
    assert [r["control_id"] for r in before] == [controls[0]["id"]]
    fake.reset()
    fake.enqueue(
        Reply(tool_input={"controls": []}),  # only a field the schema does not have
        Reply(tool_input={"mapped_controls": "none"}),
    )
    job = await wait_for_job(jobs, await dispatch(client, path))
    assert_corrected_once_then_failed(job, fake)
    assert await entities.document_controls(doc["id"]) == before


async def test_invalid_output_once_is_corrected(
    client: Client, worker: Any, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    mapping = await make_mapping(entities)
    fake.enqueue(Malformed("no_tool"))
    job = await wait_for_job(
        jobs, await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    )
    assert job.status == "completed", job.error_message
    assert len(fake.requests) == 2


async def test_refusal_fails_the_job(
    client: Client, worker: Any, entities: EntityStore, jobs: JobStore, fake: FakeAnthropic
) -> None:
    mapping = await make_mapping(entities)
    fake.enqueue(Refusal())
    job = await wait_for_job(
        jobs, await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    )
    assert job.status == "failed"
    assert "declined" in (job.error_message or "")


async def test_entity_deleted_while_running_fails_the_job(
    client: Client,
    worker: Any,
    entities: EntityStore,
    jobs: JobStore,
    fake: FakeAnthropic,
    pool: asyncpg.Pool,
) -> None:
    mapping = await make_mapping(entities)
    fake.default = Delay(0.5)
    job_id = await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    await fake.wait_for_requests(1)
    await pool.execute("DELETE FROM requirement_mappings WHERE id = $1", mapping["id"])
    job = await wait_for_job(jobs, job_id)
    assert job.status == "failed"
    assert f"Mapping {mapping['id']}" in (job.error_message or "")
    assert job.result is None


async def test_mappings_asked_for_together_are_read_together(
    dsn: str, entities: EntityStore
) -> None:
    requirement = await entities.create_requirement("R-1", "Records", "Keep records")
    ids = []
    for i in range(40):
        doc = await entities.create_document(f"Doc {i}", f"Records are kept for doc {i}.")
        ids.append((await entities.create_mapping(requirement["id"], doc["id"]))["id"])
    async with counting_pool(dsn) as (counted, statements):
        store = EntityStore(counted)
        missing = max(ids) + 1000
        found = await asyncio.gather(
            *(store.mapping_for_analysis(i) for i in [*ids, missing, ids[0]])
        )
    assert [m.id if m else None for m in found] == [*ids, None, ids[0]]
    assert found[7] is not None and found[7].document_content == "Records are kept for doc 7."
    assert found[7].requirement_code == "R-1"
    # 42 asked, a few reads: the first ones at once, the rest together after them.
    assert len([q for q in statements if "The mappings among $1" in q]) < 10
