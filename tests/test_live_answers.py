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
from service.jobs.text import TEXT_CHANNEL, TextPiece, TextPublisher, TextSoFar, decode, encode
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


def placed(deltas: list[dict[str, Any]], **stream: Any) -> str:
    """The text of one stream as a follower that places each delta's text at its offset has
    it (dropping what followed), each checked to leave no gap."""
    text = ""
    for delta in deltas:
        if all(delta.get(k) == v for k, v in stream.items()):
            assert delta["offset"] <= len(text), (delta, text)
            text = text[: delta["offset"]] + delta["text"]
    return text


def written_before(answer: dict[str, Any], chars: int, answer_field: str = "rationale") -> str:
    """The text of the answer's field the fake has streamed when it pauses after `chars`
    characters of the tool input."""
    written, so_far = 0, ""
    scan = FieldText(answer_field)
    for piece in _stream_pieces(json.dumps(answer)):
        if written >= chars:
            break
        so_far += "".join(p.text for p in scan.feed(piece))
        written += len(piece)
    return so_far


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


async def join_late(client: Client, path: str, job_id: str, so_far: str) -> Stream:
    """A follower arriving mid-answer: its stream, whose first delta is the text so far."""
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
    return late


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
    so_far = written_before(answer, 60)
    assert 0 < len(so_far) < len(RATIONALE)
    await read_deltas_until(early, lambda d: text_of(d) == so_far)

    late = await join_late(client, path, job_id, so_far)

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


REJECTED = "Rejected: the score below is not a number, so this whole answer is written again."


async def test_an_answer_written_again_starts_its_text_afresh(
    worker: Any, client: Client, entities: EntityStore, fake: FakeAnthropic
) -> None:
    mapping = await make_mapping(entities)
    # The first answer's score is not an integer: it fails validation, and the corrective
    # call of the same attempt writes the answer again. Each pauses partway through.
    rejected = {"score": "high", "rationale": REJECTED, "recommendations": []}
    answer = {"score": 72, "rationale": RATIONALE, "recommendations": []}
    first_done, second_done = asyncio.Event(), asyncio.Event()
    fake.enqueue(
        Reply(tool_input=rejected, hold=(60, first_done)),
        Reply(tool_input=answer, hold=(60, second_done)),
    )
    job_id = await dispatch(client, f"/api/gap-analysis/ai-match/{mapping['id']}")
    path = f"/api/ai-jobs/{job_id}/events"
    early = Stream(await client.get(path))
    rejected_so_far = written_before(rejected, 60)
    assert rejected_so_far
    await read_deltas_until(early, lambda d: text_of(d) == rejected_so_far)

    first_done.set()
    so_far = written_before(answer, 60)
    assert 0 < len(so_far) < len(RATIONALE) and not REJECTED.startswith(so_far)
    await read_deltas_until(early, lambda d: placed(d) == so_far)
    # A follower arriving now gets the new answer's text only.
    late = await join_late(client, path, job_id, so_far)

    second_done.set()
    for stream in (early, late):
        final = (await stream.rest())[-1][1]
        assert final["status"] == "completed", final["errorMessage"]
        assert final["attempts"] == 1
        assert placed(deltas_of(bytes(stream.raw))) == final["result"]["aiMatchRationale"]
    assert final["result"]["aiMatchRationale"] == RATIONALE
    corrective = fake.requests[-1].body["messages"][-1]["content"][0]
    assert corrective["type"] == "tool_result" and corrective["is_error"] is True
    # The rejected answer's text went out, then its text started again at offset 0, and
    # what followed adds up to the answer taken.
    deltas = deltas_of(bytes(early.raw))
    assert {(d["attempt"], d["field"]) for d in deltas} == {(1, "rationale")}
    again = next(i for i, d in enumerate(deltas) if i > 0 and d["offset"] == 0)
    shown = text_of(deltas[:again])
    assert REJECTED.startswith(shown) and len(shown) >= len(rejected_so_far)
    assert text_of(deltas[again:]) == RATIONALE


async def test_a_control_the_answer_written_again_leaves_out_loses_its_text(
    worker: Any, client: Client, entities: EntityStore, fake: FakeAnthropic
) -> None:
    doc = await entities.create_document("Access policy", DOCUMENT)
    first, second = (c["id"] for c in await seed_controls(entities, 2))  # one batch
    # The first answer maps both controls, one with a confidence that is not a number; the
    # answer written again maps the first control only.
    rejected = {
        "mapped_controls": [
            {"control_id": first, "confidence": 80, "rationale": "Rejected, first."},
            {"control_id": second, "confidence": "high", "rationale": "Rejected, second."},
        ]
    }
    answer = {"mapped_controls": [{"control_id": first, "confidence": 80, "rationale": RATIONALE}]}
    first_done = asyncio.Event()
    fake.enqueue(
        Reply(tool_input=rejected, hold=(len(json.dumps(rejected)) - 3, first_done)),
        Reply(tool_input=answer),
    )
    job_id = await dispatch(client, f"/api/documents/{doc['id']}/ai-map-controls")
    stream = Stream(await client.get(f"/api/ai-jobs/{job_id}/events"))
    await read_deltas_until(stream, lambda d: text_of(d, controlId=second) == "Rejected, second.")
    first_done.set()
    final = (await stream.rest())[-1][1]
    assert final["status"] == "completed", final["errorMessage"]
    assert final["attempts"] == 1
    assert [(c["controlId"], c["rationale"]) for c in final["result"]["mappedControls"]] == [
        (first, RATIONALE)
    ]
    deltas = deltas_of(bytes(stream.raw))
    assert placed(deltas, controlId=first) == RATIONALE
    assert placed(deltas, controlId=second) == ""
    # The second control's text went out, then a delta with none at offset 0 took it back.
    of_second = [(d["offset"], d["text"]) for d in deltas if d["controlId"] == second]
    assert "".join(text for _, text in of_second[:-1]) == "Rejected, second."
    assert of_second[-1] == (0, "")


async def test_a_restart_starts_the_matching_streams_afresh_and_leaves_the_others(
    dsn: str, pool: asyncpg.Pool
) -> None:
    heard: list[TextPiece] = []
    listener = await asyncpg.connect(dsn)
    await listener.add_listener(TEXT_CHANNEL, lambda *args: heard.extend(decode(args[-1])))
    publisher = TextPublisher(pool, interval_s=0.01)
    await publisher.start()
    job, other = uuid.uuid4(), uuid.uuid4()

    def stream(part: str, control: int) -> dict[str, str | int]:
        return {"field": "rationale", "part": part, "controlId": control}

    async def sent(*jobs: uuid.UUID) -> None:
        for job_id in jobs:
            await publisher.sent(job_id)
        # What was sent is heard once a NOTIFY sent after it is.
        marker = TextPiece(uuid.uuid4(), 1, {"field": "end"}, 0, "end")
        await pool.execute("SELECT pg_notify($1, $2)", TEXT_CHANNEL, encode([marker])[0])
        await wait_until(lambda: asyncio.sleep(0, marker in heard))
        heard.remove(marker)

    try:
        publisher.write(job, 1, stream("batch-1", 3), "old three ")
        publisher.write(job, 1, stream("batch-1", 6), "old six")
        publisher.write(job, 1, stream("batch-2", 9), "batch two")
        publisher.write(job, 2, stream("batch-1", 3), "next attempt")
        publisher.write(other, 1, stream("batch-1", 3), "other job")
        await sent(job, other)
        round_one = len(heard)
        assert round_one == 5

        # Written, not sent yet, when the restart comes: a piece of a stream that went out,
        # and the first piece of one that did not.
        publisher.write(job, 1, stream("batch-1", 3), "more of the old")
        publisher.write(job, 1, stream("batch-1", 12), "never sent")
        publisher.restart(job, 1, {"field": "rationale", "part": "batch-1"})
        publisher.write(job, 1, stream("batch-1", 3), "new")
        # Written again, and started afresh again before a send: followers still drop the old.
        publisher.write(job, 1, stream("batch-1", 6), "rejected too")
        publisher.restart(job, 1, stream("batch-1", 6))
        publisher.write(job, 1, stream("batch-2", 9), ", more")
        publisher.write(job, 2, stream("batch-1", 3), ", more")
        publisher.write(other, 1, stream("batch-1", 3), ", more")
        await sent(job, other)
        after = {
            (p.job_id, p.attempt, p.stream["part"], p.stream["controlId"]): p
            for p in heard[round_one:]
        }
        assert {k: (p.offset, p.text) for k, p in after.items()} == {
            (job, 1, "batch-1", 3): (0, "new"),  # the old text not sent is dropped
            (job, 1, "batch-1", 6): (0, ""),  # sent before: followers drop it
            (job, 1, "batch-2", 9): (9, ", more"),
            (job, 2, "batch-1", 3): (12, ", more"),
            (other, 1, "batch-1", 3): (9, ", more"),
        }
        # A late follower of the job gets the text since the restart, and nothing of the
        # stream emptied.
        texts = TextSoFar()
        for piece in heard:
            if piece.attempt == 1:
                texts.add(piece)
        assert {
            (p.stream["part"], p.stream["controlId"], p.offset, p.text) for p in texts.so_far(job)
        } == {
            ("batch-1", 3, 0, "new"),
            ("batch-2", 9, 0, "batch two, more"),
        }

        # The streams go on from their new start.
        publisher.write(job, 1, stream("batch-1", 3), "er")
        publisher.write(job, 1, stream("batch-1", 6), "six")
        publisher.write(job, 1, stream("batch-1", 12), "twelve")
        await sent(job)
        deltas = [piece.as_json() for piece in heard]
        jid = str(job)
        assert placed(deltas, jobId=jid, attempt=1, part="batch-1", controlId=3) == "newer"
        assert placed(deltas, jobId=jid, attempt=1, part="batch-1", controlId=6) == "six"
        assert placed(deltas, jobId=jid, attempt=1, part="batch-1", controlId=12) == "twelve"
        assert placed(deltas, jobId=jid, attempt=1, part="batch-2") == "batch two, more"
        assert placed(deltas, jobId=str(other)) == "other job, more"
    finally:
        await publisher.stop()
        await listener.close()


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


def test_aijobs_watch_starts_a_text_written_again_on_a_line_of_its_own() -> None:
    out = io.StringIO()
    display = watch.ProgressDisplay(out, live=False)

    def delta(offset: int, text: str) -> dict[str, Any]:
        return {"jobId": "j", "attempt": 1, "field": "rationale", "text": text, "offset": offset}

    for piece in (delta(0, "Rejected "), delta(9, "answer"), delta(0, ""), delta(0, "Taken")):
        display.text(piece)
    assert out.getvalue() == "  rationale: Rejected answer\n  rationale: Taken"
