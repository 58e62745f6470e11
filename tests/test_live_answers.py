"""Live answers: the partial result of a running ai-map-controls job, and the text of the
model's answer as it is written (`event: delta` on the event stream)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from service.config import Settings
from service.entities.store import EntityStore
from service.jobs.store import JobStore
from tests.conftest import DOCUMENT, make_settings, seed_controls, wait_for_job
from tests.fake_anthropic import FakeAnthropic
from tests.test_batches import every_third
from tests.test_processors import dispatch
from tests.test_sse import Stream

Client = TestClient[Any, Any]


class Gate:
    """Holds each model answer until the test lets one through."""

    def __init__(self) -> None:
        self._open: asyncio.Queue[None] = asyncio.Queue()

    def let_one_through(self) -> None:
        self._open.put_nowait(None)

    async def every_third(self, body: dict[str, Any]) -> dict[str, Any]:
        await self._open.get()
        return every_third(body)


def expected_partial(controls: list[dict[str, Any]], batches_done: int) -> list[dict[str, Any]]:
    """The controls every_third maps among the first `batches_done` batches of 25."""
    ids = [c["id"] for c in controls[: 25 * batches_done] if c["id"] % 3 == 0]
    return [{"controlId": i, "confidence": 80, "rationale": f"covers {i}"} for i in sorted(ids)]


@pytest.fixture
def settings(dsn: str, fake: FakeAnthropic) -> Settings:
    # One batch at a time, so that each finished batch is a step the test can see.
    return make_settings(dsn, fake.url, parallel_batches=1)


async def test_partial_results_grow_batch_by_batch_and_give_way_to_the_result(
    worker: Any,
    client: Client,
    entities: EntityStore,
    jobs: JobStore,
    fake: FakeAnthropic,
    pool: asyncpg.Pool,
) -> None:
    gate = Gate()
    fake.responder = gate.every_third
    doc = await entities.create_document("Access policy", DOCUMENT)
    controls = await seed_controls(entities, 100)  # 4 batches of 25
    job_id = await dispatch(client, f"/api/documents/{doc['id']}/ai-map-controls")
    path = f"/api/ai-jobs/{job_id}"
    stream = Stream(await client.get(f"{path}/events"))
    _, first = await stream.next_event()
    assert first["partialResult"] is None

    for done in (1, 2, 3):
        gate.let_one_through()
        while True:
            _, job = await stream.next_event()
            partial = job["partialResult"]
            if partial is not None and partial["batchesDone"] == done:
                break
            # Never ahead of what the test let through, never shrinking.
            assert partial is None or partial["batchesDone"] < done
        assert job["status"] == "processing"
        assert job["result"] is None
        assert partial == {
            "mappedControls": expected_partial(controls, done),
            "batchesDone": done,
        }
        polled = await client.get(path)
        assert polled.status == 200
        assert (await polled.json())["partialResult"] == partial

    gate.let_one_through()
    events = await stream.rest()
    last = events[-1][1]
    assert last["status"] == "completed"
    assert last["partialResult"] is None
    assert last["result"]["mappedControls"] == expected_partial(controls, 4)
    final = await (await client.get(path)).json()
    assert final["partialResult"] is None


async def test_other_job_types_have_no_partial_result(
    worker: Any, client: Client, entities: EntityStore, jobs: JobStore
) -> None:
    doc = await entities.create_document("Access policy", "Access is reviewed quarterly.")
    requirement = await entities.create_requirement("A.5.15", "Access control", "Rules.")
    mapping = await entities.create_mapping(requirement["id"], doc["id"])
    job_id = await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    await wait_for_job(jobs, job_id)
    body = await (await client.get(f"/api/ai-jobs/{job_id}")).json()
    assert body["status"] == "completed"
    assert "partialResult" in body and body["partialResult"] is None
