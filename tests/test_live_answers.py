"""Live answers: the partial result of a running ai-map-controls job, and the text of the
model's answer as it is written (`event: delta` on the event stream)."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from service import watch
from service.ai.partial_json import FieldText
from service.api.app import create_app
from service.config import Settings
from service.entities.store import EntityStore
from service.jobs.store import JobStore
from service.jobs.text import TEXT_CHANNEL, TextPiece, decode, encode
from service.runtime import running_worker
from tests.conftest import (
    DOCUMENT,
    auth_headers,
    make_settings,
    seed_controls,
    token_for,
    wait_for_job,
    wait_until,
)
from tests.fake_anthropic import FakeAnthropic, Reply, _stream_pieces
from tests.test_api_jobs import make_mapping
from tests.test_batches import every_third
from tests.test_processors import dispatch
from tests.test_sse import Stream, blocks

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


# -- the model's text as it is written ------------------------------------------------------


def deltas_of(raw: bytes) -> list[dict[str, Any]]:
    """The `delta` events of a stream, in order, each checked to have no id."""
    found: list[dict[str, Any]] = []
    whole = raw[: raw.rfind(b"\n\n") + 2]
    if not whole:
        return found
    for block in blocks(whole):
        if block[0] == ("event", "delta"):
            assert [name for name, _ in block] == ["event", "data"], block
            found.append(orjson.loads(block[1][1]))
    return found


def text_of(deltas: list[dict[str, Any]], **stream: Any) -> str:
    """The text the deltas of one stream add up to, checked to follow on each other."""
    text = ""
    for delta in deltas:
        if all(delta.get(k) == v for k, v in stream.items()):
            assert delta["offset"] == len(text), (delta, text)
            text += delta["text"]
    return text


async def read_deltas_until(stream: Stream, wanted: Callable[[list[dict[str, Any]]], bool]) -> None:
    """Read the stream until its deltas so far satisfy `wanted`."""
    while not wanted(deltas_of(bytes(stream.raw))):
        block = await asyncio.wait_for(stream.response.content.readuntil(b"\n\n"), 30)
        assert block, "the stream ended"
        stream.raw += block


RATIONALE = (
    'The policy requires "MFA" for remote access\\and reviews access quarterly; '
    "the owner signs off — écrit à la main 🙂.\nNo gaps in logging."
)


async def test_the_deltas_add_up_to_the_answer_of_each_job_type(
    worker: Any, client: Client, entities: EntityStore, fake: FakeAnthropic
) -> None:
    # ai-match: the rationale.
    mapping = await make_mapping(entities)
    fake.enqueue(Reply(tool_input={"score": 72, "rationale": RATIONALE, "recommendations": []}))
    job_id = await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    stream = Stream(await client.get(f"/api/ai-jobs/{job_id}/events"))
    final = (await stream.rest())[-1][1]
    assert final["status"] == "completed"
    deltas = deltas_of(bytes(stream.raw))
    assert {(d["jobId"], d["attempt"], d["field"]) for d in deltas} == {(job_id, 1, "rationale")}
    assert text_of(deltas) == final["result"]["aiMatchRationale"] == RATIONALE
    assert fake.requests[-1].body["stream"] is True

    # ai-coverage: the summary, long enough to take several notifications.
    summary = " ".join(f"word{i} «ünïcode»" for i in range(3_000))
    fake.enqueue(
        Reply(
            tool_input={
                "coverage_score": 40,
                "summary": summary,
                "gaps": ["logging"],
                "documents": [{"document_id": mapping["document_id"], "score": 40}],
            }
        )
    )
    job_id = await dispatch(client, f"/api/requirements/{mapping['requirement_id']}/ai-coverage")
    stream = Stream(await client.get(f"/api/ai-jobs/{job_id}/events"))
    final = (await stream.rest())[-1][1]
    assert final["status"] == "completed", final["errorMessage"]
    deltas = deltas_of(bytes(stream.raw))
    assert {d["field"] for d in deltas} == {"summary"}
    assert text_of(deltas) == final["result"]["summary"] == summary

    # ai-map-controls: each control's rationale, by batch.
    fake.responder = every_third
    doc = await entities.create_document("Access policy", DOCUMENT)
    await seed_controls(entities, 50)  # 2 batches
    job_id = await dispatch(client, f"/api/documents/{doc['id']}/ai-map-controls")
    stream = Stream(await client.get(f"/api/ai-jobs/{job_id}/events"))
    final = (await stream.rest())[-1][1]
    assert final["status"] == "completed", final["errorMessage"]
    deltas = deltas_of(bytes(stream.raw))
    mapped = final["result"]["mappedControls"]
    assert len(mapped) == 16
    assert {(d["field"], d["part"]) for d in deltas} == {
        ("rationale", "batch-1"),
        ("rationale", "batch-2"),
    }
    for control in mapped:
        assert text_of(deltas, controlId=control["controlId"]) == control["rationale"]
    assert {d["controlId"] for d in deltas} == {c["controlId"] for c in mapped}


async def test_a_late_subscriber_first_gets_the_text_so_far(
    worker: Any, client: Client, entities: EntityStore, fake: FakeAnthropic
) -> None:
    mapping = await make_mapping(entities)
    answer = {"score": 72, "rationale": RATIONALE, "recommendations": []}
    release = asyncio.Event()
    fake.enqueue(Reply(tool_input=answer, hold=(60, release)))
    job_id = await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    path = f"/api/ai-jobs/{job_id}/events"
    early = Stream(await client.get(path))
    # What the model has written when it pauses: the pieces of the answer up to the hold.
    written, so_far = 0, ""
    scan = FieldText("rationale")
    for piece in _stream_pieces(json.dumps(answer)):
        if written >= 60:
            break
        so_far += "".join(p.text for p in scan.feed(piece))
        written += len(piece)
    assert 0 < len(so_far) < len(RATIONALE)
    await read_deltas_until(early, lambda d: text_of(d) == so_far)

    late = Stream(await client.get(path))
    _, state = await late.next_event()
    assert state["status"] == "processing"
    await read_deltas_until(late, lambda d: len(d) >= 1)
    assert deltas_of(bytes(late.raw))[0] == {
        "jobId": job_id,
        "attempt": 1,
        "field": "rationale",
        "text": so_far,
        "offset": 0,
    }

    release.set()
    for stream in (early, late):
        final = (await stream.rest())[-1][1]
        assert final["status"] == "completed"
        assert text_of(deltas_of(bytes(stream.raw))) == RATIONALE


async def test_a_new_attempt_starts_its_text_afresh(
    worker: Any, client: Client, entities: EntityStore, fake: FakeAnthropic
) -> None:
    mapping = await make_mapping(entities)
    answer = {"score": 72, "rationale": RATIONALE, "recommendations": []}
    # The first attempt's stream breaks off halfway through the rationale.
    fake.enqueue(Reply(tool_input=answer, cut_after=60), Reply(tool_input=answer))
    job_id = await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    stream = Stream(await client.get(f"/api/ai-jobs/{job_id}/events"))
    events = await stream.rest()
    final = events[-1][1]
    assert final["status"] == "completed"
    assert final["attempts"] == 2
    deltas = deltas_of(bytes(stream.raw))
    first = text_of(deltas, attempt=1)
    assert first and RATIONALE.startswith(first) and first != RATIONALE
    second = [d for d in deltas if d["attempt"] == 2]
    assert second[0]["offset"] == 0
    assert text_of(deltas, attempt=2) == RATIONALE
    # Every delta of the first attempt came before the second's.
    assert [d["attempt"] for d in deltas] == sorted(d["attempt"] for d in deltas)
    # A subscriber arriving now gets the second attempt's text only: none, the job is done.
    again = Stream(await client.get(f"/api/ai-jobs/{job_id}/events"))
    await again.rest()
    assert deltas_of(bytes(again.raw)) == []


async def test_with_stream_deltas_off_no_text_is_sent(
    dsn: str, fake: FakeAnthropic, pool: asyncpg.Pool, entities: EntityStore
) -> None:
    settings = make_settings(dsn, fake.url, stream_deltas=False)
    app = create_app(settings, dsn, pool)
    listener = await asyncpg.connect(dsn)
    heard: list[str] = []
    await listener.add_listener(TEXT_CHANNEL, lambda *args: heard.append(args[-1]))
    try:
        async with (
            running_worker(settings, dsn, pool),
            TestClient(TestServer(app), headers=auth_headers()) as client,
        ):
            mapping = await make_mapping(entities)
            fake.enqueue(
                Reply(tool_input={"score": 72, "rationale": RATIONALE, "recommendations": []})
            )
            job_id = await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
            stream = Stream(await client.get(f"/api/ai-jobs/{job_id}/events"))
            final = (await stream.rest())[-1][1]
            assert final["result"]["aiMatchRationale"] == RATIONALE
            assert deltas_of(bytes(stream.raw)) == []
            assert not fake.requests[-1].body.get("stream")
            # A NOTIFY sent after the job's would arrive after it: none of ours came before.
            await pool.execute("SELECT pg_notify($1, 'end')", TEXT_CHANNEL)

            async def heard_the_end() -> bool:
                return bool(heard)

            await wait_until(heard_the_end, 10)
            assert heard == ["end"]
    finally:
        await listener.close()


def test_text_payloads_stay_under_the_notify_limit_and_read_back() -> None:
    job_id = uuid.uuid4()
    pieces = [
        TextPiece(job_id, 1, {"field": "summary"}, 0, 'é"\n🙂' * 3_000),
        TextPiece(job_id, 1, {"field": "rationale", "controlId": 7}, 12, "short"),
    ]
    payloads = encode(pieces)
    assert len(payloads) > 1
    assert all(len(p.encode()) < 8_000 for p in payloads)
    read = [piece for p in payloads for piece in decode(p)]
    assert "".join(p.text for p in read if p.stream == {"field": "summary"}) == pieces[0].text
    assert next(p.offset for p in read if p.stream == {"field": "summary"}) == 0
    assert read[-1] == pieces[1]


async def test_aijobs_watch_prints_the_text_as_it_arrives_under_the_progress(
    worker: Any, client: Client, entities: EntityStore, fake: FakeAnthropic
) -> None:
    mapping = await make_mapping(entities)
    release = asyncio.Event()
    answer = {"score": 72, "rationale": RATIONALE, "recommendations": []}
    fake.enqueue(Reply(tool_input=answer, hold=(60, release)))
    job_id = await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    out, err = io.StringIO(), io.StringIO()
    watching = asyncio.create_task(
        watch.watch(str(client.make_url("/")), job_id, out, err, token=token_for())
    )
    # Half the answer is printed while the model is still writing it.
    await wait_until(lambda: asyncio.sleep(0, "  rationale: The policy" in out.getvalue()))
    assert "completed" not in out.getvalue()
    release.set()
    assert await asyncio.wait_for(watching, 30) == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    text_at = next(i for i, line in enumerate(lines) if line.startswith("  rationale: "))
    assert lines[text_at - 1].startswith("processing")
    written = "\n".join(lines[text_at:-1]).removeprefix("  rationale: ")
    assert written == RATIONALE.replace("\n", "\n    ")
    assert lines[-1].startswith("completed")
