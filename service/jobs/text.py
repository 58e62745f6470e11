"""Ephemeral job text: what a running job writes as it goes, for whoever follows it live.

A job's processor may write text to named streams of the job (`JobContext.write_text`: the
answer of a model as it is generated, say). The text is never stored: a worker's
`TextPublisher` gathers what all of its jobs wrote and sends it at most every
`interval_s` (100 ms) in one statement of NOTIFYs on `TEXT_CHANNEL`, each payload under
Postgres' limit of 8,000 bytes; never a write per piece of text. Each piece says where in its
stream it starts (`offset`, in characters), and which attempt of the job wrote it: a new
attempt starts its streams afresh. Within an attempt, a processor may start some of its
streams afresh too (`TextPublisher.restart`: a model's answer written again); their next
piece starts at offset 0, and a stream whose text was sent gets a piece with no text at
offset 0 meanwhile, so that followers drop what they had of it.

An API process hears them on its event listener and keeps, in `TextSoFar`, the text of each
stream of the running jobs as the pieces it heard built it, so that a follower who arrives
mid-answer first gets the text so far. A piece lost (a listener that reconnected, a flush
the database refused) leaves a gap that the next piece's offset shows; nothing is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field

import asyncpg
import orjson

from service.db.queries import Queries
from service.logs import get_logger

log = get_logger(__name__)
Q = Queries("service.jobs", "queries.sql")

TEXT_CHANNEL = "ai_job_text"
# Postgres refuses a payload of 8,000 bytes or more.
MAX_PAYLOAD_BYTES = 7_800
# A piece is cut to this many characters at most, so that one always fits a payload (a
# character is at most 6 bytes of JSON).
MAX_PIECE_CHARS = 1_000

StreamKey = tuple[tuple[str, str | int], ...]


def stream_key(stream: Mapping[str, str | int]) -> StreamKey:
    return tuple(sorted(stream.items()))


@dataclass(frozen=True, slots=True)
class TextPiece:
    """Text added to one stream of one attempt of a job, starting at `offset` characters."""

    job_id: uuid.UUID
    attempt: int
    stream: Mapping[str, str | int]
    offset: int
    text: str

    @property
    def end(self) -> int:
        return self.offset + len(self.text)

    def as_json(self) -> dict[str, object]:
        """The piece as followers see it: jobId, attempt, the stream's names, text, offset."""
        return {
            "jobId": str(self.job_id),
            "attempt": self.attempt,
            **self.stream,
            "text": self.text,
            "offset": self.offset,
        }


def encode(pieces: list[TextPiece]) -> list[str]:
    """Payloads of NOTIFY for the pieces, in order, each under MAX_PAYLOAD_BYTES."""
    payloads: list[bytes] = []
    entries: list[bytes] = []
    size = 2
    for piece in pieces:
        # A piece with no text (a stream started afresh) is sent too.
        for start in range(0, len(piece.text) or 1, MAX_PIECE_CHARS):
            entry = orjson.dumps(
                [
                    str(piece.job_id),
                    piece.attempt,
                    piece.stream,
                    piece.offset + start,
                    piece.text[start : start + MAX_PIECE_CHARS],
                ]
            )
            if entries and size + len(entry) + 1 > MAX_PAYLOAD_BYTES:
                payloads.append(b"[" + b",".join(entries) + b"]")
                entries, size = [], 2
            entries.append(entry)
            size += len(entry) + 1
    if entries:
        payloads.append(b"[" + b",".join(entries) + b"]")
    return [p.decode() for p in payloads]


def decode(payload: str) -> list[TextPiece]:
    """The pieces of a payload; nothing for one that is not ours."""
    try:
        entries = orjson.loads(payload)
        return [
            TextPiece(uuid.UUID(job_id), int(attempt), dict(stream), int(offset), str(text))
            for job_id, attempt, stream, offset, text in entries
        ]
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return []


@dataclass(slots=True)
class _Pending:
    stream: Mapping[str, str | int]
    offset: int
    parts: list[str] = field(default_factory=list)
    # Starts the stream afresh: followers drop what they had of it.
    afresh: bool = False


class TextPublisher:
    """Sends the text a worker's jobs write, all of them together, at most every
    `interval_s`: one statement per send, however many jobs wrote.

    With `connect`, it sends on a connection of its own (opened again after a failure), so
    that the text does not wait behind the jobs' writes for a pooled connection; else
    through `pool`.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        interval_s: float = 0.1,
        connect: Callable[[], Awaitable[asyncpg.Connection]] | None = None,
    ) -> None:
        self._pool = pool
        self._connect = connect
        self._conn: asyncpg.Connection | None = None
        self._interval_s = interval_s
        # What waits for the next send, by (job, attempt, stream), in the order written.
        self._pending: dict[tuple[uuid.UUID, int, StreamKey], _Pending] = {}
        # How many characters each stream of each running attempt has had.
        self._written: dict[tuple[uuid.UUID, int], dict[StreamKey, int]] = {}
        self._wake = asyncio.Event()
        self._sent: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.sends = 0
        self.notifications = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="text_publisher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self._send()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    def write(
        self, job_id: uuid.UUID, attempt: int, stream: Mapping[str, str | int], text: str
    ) -> None:
        """Append `text` to a stream of the job's attempt; sent with the next send."""
        if not text:
            return
        key = stream_key(stream)
        written = self._written.setdefault((job_id, attempt), {})
        offset = written.get(key, 0)
        written[key] = offset + len(text)
        pending = self._pending.get((job_id, attempt, key))
        if pending is None:
            pending = self._pending[(job_id, attempt, key)] = _Pending(dict(stream), offset)
        pending.parts.append(text)
        self._wake.set()

    def restart(self, job_id: uuid.UUID, attempt: int, streams: Mapping[str, str | int]) -> None:
        """Start afresh every stream of the job's attempt whose names include all of
        `streams`: its next piece starts at offset 0. What was written to it and not sent yet
        is dropped; a stream whose text was sent gets a piece with no text at offset 0 with
        the next send (unless its new text goes with it), so that followers drop the old."""
        written = self._written.get((job_id, attempt))
        if not written:
            return
        wanted = set(streams.items())
        for key in [key for key in written if wanted.issubset(key)]:
            del written[key]
            pending = self._pending.pop((job_id, attempt, key), None)
            if pending is not None and pending.offset == 0 and not pending.afresh:
                continue  # none of its text went out: followers have nothing to drop
            stream = pending.stream if pending is not None else dict(key)
            self._pending[(job_id, attempt, key)] = _Pending(stream, 0, afresh=True)
            self._wake.set()

    async def sent(self, job_id: uuid.UUID) -> None:
        """Returns once what the job wrote so far has been sent (or given up)."""
        while any(key[0] == job_id for key in self._pending) and self._task is not None:
            if self._sent is None or self._sent.done():
                self._sent = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._sent)

    def forget(self, job_id: uuid.UUID, attempt: int) -> None:
        """The attempt has ended: its streams' lengths are no longer needed."""
        self._written.pop((job_id, attempt), None)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._send()
            await asyncio.sleep(self._interval_s)

    async def _execute(self, payloads: list[str]) -> None:
        if self._connect is None:
            await self._pool.execute(Q.notify_many, TEXT_CHANNEL, payloads)
            return
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
        try:
            await self._conn.execute(Q.notify_many, TEXT_CHANNEL, payloads)
        except Exception:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                conn.terminate()
            raise

    async def _send(self) -> None:
        pending, self._pending = self._pending, {}
        sent, self._sent = self._sent, None
        try:
            if not pending:
                return
            payloads = encode(
                [
                    TextPiece(job_id, attempt, p.stream, p.offset, "".join(p.parts))
                    for (job_id, attempt, _), p in pending.items()
                ]
            )
            try:
                await self._execute(payloads)
            except Exception as exc:
                # The text is ephemeral: followers see a gap; the job goes on.
                if not self._failing:
                    log.warning("job_text_not_sent", error=f"{type(exc).__name__}: {exc}")
                self._failing = True
                return
            self._failing = False
            self.sends += 1
            self.notifications += len(payloads)
        finally:
            if sent is not None and not sent.done():
                sent.set_result(None)


@dataclass(slots=True)
class _Stream:
    stream: Mapping[str, str | int]
    offset: int
    parts: list[str]
    end: int


@dataclass(slots=True)
class _JobText:
    attempt: int
    streams: dict[StreamKey, _Stream]
    touched: float


class TextSoFar:
    """The text of each stream of the jobs running now, as the pieces heard built it.

    Kept for every job heard of, followed or not, so that a follower who arrives mid-answer
    gets what was written before. A job's text goes when a newer attempt writes, when the
    job is known to have finished (`drop`), or after `idle_s` without a piece; and the
    oldest go beyond `max_jobs`.
    """

    def __init__(self, idle_s: float = 120.0, max_jobs: int = 10_000) -> None:
        self._idle_s = idle_s
        self._max_jobs = max_jobs
        self._jobs: OrderedDict[uuid.UUID, _JobText] = OrderedDict()

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, piece: TextPiece) -> bool:
        """Take a piece heard; False when it is of an attempt older than one already heard
        (not to be passed on)."""
        now = time.monotonic()
        job = self._jobs.get(piece.job_id)
        if job is None or piece.attempt > job.attempt:
            job = self._jobs[piece.job_id] = _JobText(piece.attempt, {}, now)
        elif piece.attempt < job.attempt:
            return False
        key = stream_key(piece.stream)
        stream = job.streams.get(key)
        if stream is None or stream.end != piece.offset:
            # The stream's start, or a piece after a gap: the text known starts here.
            job.streams[key] = _Stream(piece.stream, piece.offset, [piece.text], piece.end)
        else:
            stream.parts.append(piece.text)
            stream.end = piece.end
        job.touched = now
        self._jobs.move_to_end(piece.job_id)
        self._evict(now)
        return True

    def so_far(self, job_id: uuid.UUID) -> Iterator[TextPiece]:
        """One piece per stream of the job's latest attempt, with all of its text known."""
        job = self._jobs.get(job_id)
        if job is None:
            return
        for stream in job.streams.values():
            text = "".join(stream.parts)
            if not text:
                continue  # started afresh, nothing written since
            stream.parts = [text]
            yield TextPiece(job_id, job.attempt, stream.stream, stream.offset, text)

    def drop(self, job_id: uuid.UUID) -> None:
        self._jobs.pop(job_id, None)

    def _evict(self, now: float) -> None:
        jobs = self._jobs
        while jobs:
            oldest = next(iter(jobs.values()))
            if len(jobs) <= self._max_jobs and now - oldest.touched < self._idle_s:
                break
            jobs.popitem(last=False)
