"""One rate limit budget for every worker process, kept in Postgres.

Anthropic limits requests, input tokens and output tokens per minute for the whole
organisation. Each model call takes its share of a token bucket (one row of ai_rate_limits
per model) before it is sent, waiting while the bucket is short rather than collecting 429s,
and settles after the answer: unused tokens go back, the anthropic-ratelimit-* headers
correct the bucket and teach the limits when none are configured, and a 429 that slipped
through anyway pauses every worker until its retry-after. The calls of one process go to
the database together (see RateLimiter), so that hundreds of calls at once cost a few round
trips rather than two transactions each.

The bucket holds at most `burst` of a minute's budget and refills the rest evenly over the
minute, so no 60-second window, sliding or fixed, ever sees more than the limit, and calls go
out evenly: Anthropic may enforce a per-minute limit over shorter intervals (60 a minute as one
a second), so bursts are what draws 429s. It plans for `share` of each limit, leaving room for
clock and network jitter and for other users of the same organisation. At saturation it sends
share x (1 - burst) of each limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg

from service.ai.analyzer import Usage
from service.db.errors import DATABASE_UNAVAILABLE
from service.db.pool import Connection
from service.db.queries import Queries
from service.jobs.model import RetryLater
from service.logs import get_logger

log = get_logger(__name__)

Q = Queries("service.ai", "ratelimit.sql")

DIMENSIONS = ("requests", "input_tokens", "output_tokens")
# Until an answer tells the real limits, assume the lowest tier's requests per minute.
PROVISIONAL_RPM = 50
# A 429 without retry-after pauses everyone this long.
DEFAULT_PAUSE_S = 5.0
# Sleep at most this long between looks at the bucket, so that better news (limits learned,
# tokens given back) is seen soon.
MAX_SLEEP_S = 5.0
# The budget's task keeps its connection this long after its last round, for the next call's
# take or settle: under load they keep coming, and each would otherwise queue again for a
# connection of the pool behind everything else the jobs do.
LINGER_S = 1.0

# What a refill computed to a rounding error short of a whole request still pays for it.
_EPSILON = 1e-9

# The database away (a cut can leave the driver in a state it cannot leave:
# InternalClientError), or a statement it refused.
_DB_ERRORS: tuple[type[Exception], ...] = (*DATABASE_UNAVAILABLE, asyncpg.PostgresError)
_HEADER = "anthropic-ratelimit-{}-{}"
_HEADER_NAMES = {
    "requests": "requests",
    "input_tokens": "input-tokens",
    "output_tokens": "output-tokens",
}

T = TypeVar("T")


class BudgetExhausted(RetryLater):
    """The budget will not have room for this call before the longest wait allowed: the job
    goes back to the queue until then, rather than hold a worker slot. A snooze: the wait
    costs the job no attempt."""

    def __init__(
        self, reason: str, delay: float | None = None, *, kind: str = "rate_limited"
    ) -> None:
        super().__init__(reason, delay, kind=kind, snooze=True)


@dataclass(frozen=True)
class Limits:
    """Per-minute limits; None: no limit known (or none configured)."""

    requests: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None

    def of(self, dimension: str) -> int | None:
        value: int | None = getattr(self, dimension)
        return value


@dataclass(frozen=True)
class Policy:
    """How the budget is planned: configured limits win over learned ones."""

    configured: Limits = field(default_factory=Limits)
    share: float = 0.95
    burst: float = 0.05


@dataclass(frozen=True)
class RateHeaders:
    """The anthropic-ratelimit-* headers of one answer."""

    limits: Mapping[str, int]
    remaining: Mapping[str, int]

    @classmethod
    def parse(cls, headers: Mapping[str, str] | None) -> RateHeaders | None:
        """None when the answer carried none of them."""
        if headers is None:
            return None
        limits: dict[str, int] = {}
        remaining: dict[str, int] = {}
        for dimension, name in _HEADER_NAMES.items():
            for kind, into in (("limit", limits), ("remaining", remaining)):
                raw = headers.get(_HEADER.format(name, kind))
                if raw is None:
                    continue
                try:
                    into[dimension] = int(float(raw))
                except ValueError:
                    continue
        if not limits and not remaining:
            return None
        return cls(limits, remaining)


@dataclass
class Bucket:
    """The state of one bucket and the arithmetic on it; `now` always comes from the database."""

    learned: dict[str, int | None]
    learned_at: datetime | None
    available: dict[str, float]
    refilled_at: datetime
    paused_until: datetime | None = None
    rate_limited: int = 0
    last_rate_limited_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | asyncpg.Record) -> Bucket:
        return cls(
            learned={d: row[f"{d}_limit"] for d in DIMENSIONS},
            learned_at=row["learned_at"],
            available={d: row[f"{d}_available"] for d in DIMENSIONS},
            refilled_at=row["refilled_at"],
            paused_until=row["paused_until"],
            rate_limited=row["rate_limited"],
            last_rate_limited_at=row["last_rate_limited_at"],
        )

    def columns(self) -> tuple[object, ...]:
        """The values of save_bucket's $2 onwards."""
        return (
            *(self.learned[d] for d in DIMENSIONS),
            self.learned_at,
            *(self.available[d] for d in DIMENSIONS),
            self.refilled_at,
            self.paused_until,
            self.rate_limited,
            self.last_rate_limited_at,
        )

    def limit(self, dimension: str, policy: Policy) -> float | None:
        """The per-minute budget planned for: `share` of the limit; None: unlimited."""
        configured = policy.configured.of(dimension)
        if configured is not None:
            return configured * policy.share
        if self.learned_at is None:
            return PROVISIONAL_RPM * policy.share if dimension == "requests" else None
        learned = self.learned[dimension]
        return learned * policy.share if learned else None

    def refill(self, now: datetime, policy: Policy) -> None:
        # Not before refilled_at: paused, or another worker read the clock a moment later.
        seconds = max((now - self.refilled_at).total_seconds(), 0.0)
        for d in DIMENSIONS:
            limit = self.limit(d, policy)
            if limit is not None:
                capacity, rate = _shape(limit, policy)
                self.available[d] = min(capacity, self.available[d] + seconds * rate)
        self.refilled_at = max(self.refilled_at, now)

    def take(self, now: datetime, need: Mapping[str, float], policy: Policy) -> float:
        """Take `need` and return 0, or take nothing and return the seconds to wait.

        A call larger than the bucket can hold goes once the bucket is full, and leaves it
        below zero until the refill has paid for it.
        """
        self.refill(now, policy)
        wait = 0.0
        if self.paused_until is not None and self.paused_until > now:
            wait = (self.paused_until - now).total_seconds()
        for d in DIMENSIONS:
            limit = self.limit(d, policy)
            if limit is None or need.get(d, 0) <= 0:
                continue
            capacity, rate = _shape(limit, policy)
            wanted = min(need[d], capacity)
            if self.available[d] < wanted - _EPSILON:
                wait = max(wait, (wanted - self.available[d]) / rate)
        if wait > 0:
            return wait
        for d in DIMENSIONS:
            if self.limit(d, policy) is not None:
                self.available[d] -= need.get(d, 0)
        return 0.0

    def give_back(self, now: datetime, amounts: Mapping[str, float], policy: Policy) -> None:
        """Return what a call reserved and did not use (negative: used more than reserved)."""
        self.refill(now, policy)
        for d, amount in amounts.items():
            limit = self.limit(d, policy)
            if limit is not None and amount:
                capacity, _ = _shape(limit, policy)
                self.available[d] = min(capacity, self.available[d] + amount)

    def learn(self, now: datetime, headers: RateHeaders | None, policy: Policy) -> None:
        """Take the limits an answer announced, and what it says is left where that is less
        than we think: other users of the organisation spend from the same limits."""
        self.refill(now, policy)
        first = self.learned_at is None
        before = {d: self.limit(d, policy) for d in DIMENSIONS}
        if headers is None:
            # An endpoint that announces no limits has none we could know of.
            if first:
                self.learned = dict.fromkeys(DIMENSIONS)
                self.learned_at = now
            return
        self.learned = {d: headers.limits.get(d) for d in DIMENSIONS}
        self.learned_at = now
        for d in DIMENSIONS:
            limit = self.limit(d, policy)
            if limit is None:
                continue
            capacity, _ = _shape(limit, policy)
            if first or before[d] is None:
                self.available[d] = capacity
            announced, left = headers.limits.get(d), headers.remaining.get(d)
            if announced is not None and left is not None:
                # The part of what is left that belongs to the budget we plan for.
                ours = left - (announced - limit)
                self.available[d] = min(self.available[d], ours)

    def pause(self, now: datetime, seconds: float, policy: Policy) -> None:
        """A 429: nobody sends before `now + seconds`, and the bucket refills only from then."""
        self.refill(now, policy)
        until = now + timedelta(seconds=seconds)
        if self.paused_until is None or until > self.paused_until:
            self.paused_until = until
        for d in DIMENSIONS:
            if self.limit(d, policy) is not None:
                self.available[d] = min(self.available[d], 0.0)
        self.refilled_at = max(self.refilled_at, self.paused_until)
        self.rate_limited += 1
        self.last_rate_limited_at = now


def _shape(limit: float, policy: Policy) -> tuple[float, float]:
    """Capacity, and refill per second: at most `limit` in any 60 seconds."""
    capacity = limit * policy.burst
    return capacity, (limit - capacity) / 60.0


@dataclass(frozen=True)
class Reservation:
    """What one call took from the bucket before it was sent."""

    bucket: str
    input_tokens: int
    output_tokens: int


@dataclass
class _Take:
    """One call waiting for its budget."""

    need: dict[str, float]
    reservation: Reservation
    started: float
    granted: asyncio.Future[None]


@dataclass
class _Settle:
    """One answer's change of the bucket, waiting to be written."""

    change: Callable[[Bucket, datetime], None]
    done: asyncio.Future[None]


@dataclass
class _Line:
    """The calls of this process on one bucket: takes in the order they asked, settles, and
    the one task that brings them to the database together."""

    loop: asyncio.AbstractEventLoop
    takes: deque[_Take] = field(default_factory=deque)
    settles: list[_Settle] = field(default_factory=list)
    # Set when a settle arrives while the first take in line sleeps: it may bring room.
    news: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when anything arrives: the task, holding its connection a moment, goes on.
    work: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


def _resolve(future: asyncio.Future[None], error: BaseException | None = None) -> None:
    """Resolve a waiter's future unless its waiter gave up (cancelled) meanwhile."""
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class RateLimiter:
    """The budget every worker shares. One per process; any number of processes.

    The calls of one process on one bucket meet the database together: every change they
    wait for (the takes of calls in line, first come first served, and the settles of
    answers) is applied, in order and with the same arithmetic as one by one, in one read and
    one write of the bucket's row. Hundreds of concurrent calls cost a few round trips between
    them rather than a locked transaction each.
    """

    def __init__(self, pool: asyncpg.Pool, policy: Policy, max_wait_s: float = 120.0) -> None:
        self.pool = pool
        self.policy = policy
        self.max_wait_s = max_wait_s
        self._lines: dict[str, _Line] = {}
        self._closing = False

    async def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (the settles of answered calls) and let the connections go,
        without lingering for more. For a worker that has stopped its jobs."""
        self._closing = True
        tasks = []
        for line in self._lines.values():
            line.work.set()
            line.news.set()
            if line.task is not None and not line.task.done():
                tasks.append(line.task)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)

    async def acquire(self, bucket: str, input_tokens: int, output_tokens: int) -> Reservation:
        """Wait until the bucket has room for one call of this size, and take it.

        Raises RetryLater when the wait would be longer than `max_wait_s` (the job goes back
        to the queue rather than hold a worker slot), or when the database cannot be asked.
        """
        take = _Take(
            {"requests": 1.0, "input_tokens": input_tokens, "output_tokens": output_tokens},
            Reservation(bucket, input_tokens, output_tokens),
            time.monotonic(),
            asyncio.get_running_loop().create_future(),
        )
        line = self._line(bucket)
        line.takes.append(take)
        line.work.set()
        self._serve(bucket, line)
        try:
            async with asyncio.timeout(self.max_wait_s):
                await take.granted
        except TimeoutError:
            raise BudgetExhausted(
                f"Other calls have waited for Claude's rate limit budget for over "
                f"{self.max_wait_s:.0f} s",
                kind="rate_limited",
            ) from None
        return take.reservation

    async def answered(
        self, reservation: Reservation, usage: Usage, headers: Mapping[str, str] | None
    ) -> None:
        """A call was answered: give back what it did not use, and learn from its headers.
        Returns once the bucket is written (or could not be)."""
        await self.answered_soon(reservation, usage, headers)

    def answered_soon(
        self, reservation: Reservation, usage: Usage, headers: Mapping[str, str] | None
    ) -> asyncio.Future[None]:
        """As `answered`, without waiting: the settle goes with the bucket's next write, and
        the returned future is done once it is written (or could not be).

        Cache reads do not count against the input tokens limit; cache writes do.
        """
        used_input = usage.input_tokens + usage.cache_creation_input_tokens
        unused = {
            "input_tokens": reservation.input_tokens - used_input,
            "output_tokens": reservation.output_tokens - usage.output_tokens,
        }
        rate_headers = RateHeaders.parse(headers)

        def settle(b: Bucket, now: datetime) -> None:
            b.learn(now, rate_headers, self.policy)
            b.give_back(now, unused, self.policy)

        return self._settle(reservation.bucket, settle)

    async def rejected(
        self,
        reservation: Reservation,
        status: int,
        headers: Mapping[str, str] | None,
        retry_after: float | None,
    ) -> None:
        """A call was answered with an error status. A 429 pauses every worker."""
        rate_headers = RateHeaders.parse(headers)

        def settle(b: Bucket, now: datetime) -> None:
            b.learn(now, rate_headers, self.policy)
            if status == 429:
                b.pause(now, DEFAULT_PAUSE_S if retry_after is None else retry_after, self.policy)
            else:
                # Refused before any work: the tokens were not spent, the request was.
                b.give_back(
                    now,
                    {
                        "input_tokens": reservation.input_tokens,
                        "output_tokens": reservation.output_tokens,
                    },
                    self.policy,
                )

        if status == 429:
            log.warning("claude_rate_limited", bucket=reservation.bucket, retry_after_s=retry_after)
        await self._settle(reservation.bucket, settle)

    def _settle(
        self, bucket: str, change: Callable[[Bucket, datetime], None]
    ) -> asyncio.Future[None]:
        """Queue a change for the next write of the bucket; the future is done once it is
        written (or could not be: the bucket then stays more cautious than it needs to be)."""
        line = self._line(bucket)
        settle = _Settle(change, line.loop.create_future())
        line.settles.append(settle)
        line.news.set()
        line.work.set()
        self._serve(bucket, line)
        return settle.done

    def _line(self, bucket: str) -> _Line:
        loop = asyncio.get_running_loop()
        line = self._lines.get(bucket)
        if line is None or line.loop is not loop:
            line = self._lines[bucket] = _Line(loop)
        return line

    def _serve(self, bucket: str, line: _Line) -> None:
        if line.task is None or line.task.done():
            line.task = line.loop.create_task(self._run_line(bucket, line), name=f"budget:{bucket}")

    async def _run_line(self, bucket: str, line: _Line) -> None:
        """Rounds while there is work: on one connection while they follow each other (and
        for LINGER_S after, for more), none held while the first take in line sleeps."""
        try:
            while line.takes or line.settles:
                nap = 0.0
                try:
                    async with self.pool.acquire() as conn:
                        while nap == 0 and await self._more(line):
                            nap = await self._round(conn, bucket, line)
                except _RoundFailed:
                    continue
                except _DB_ERRORS as exc:
                    # No connection to be had: what waits now fails, as it would have on its
                    # own.
                    self._failed(bucket, line, line.settles, list(line.takes), exc)
                    line.settles = []
                    continue
                # An answer settled meanwhile may have made room: look again then.
                if nap > 0 and not line.settles:
                    line.news.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(nap):
                            await line.news.wait()
        except BaseException as exc:
            # Nobody waits forever on a line whose task died.
            for take in line.takes:
                _resolve(
                    take.granted,
                    RetryLater(f"Claude's rate limit budget could not be kept: {exc!r}"),
                )
            for settle in line.settles:
                _resolve(settle.done)
            line.takes.clear()
            line.settles.clear()
            raise

    async def _more(self, line: _Line) -> bool:
        """Whether there is work, waiting up to LINGER_S for some (not once closing)."""
        if not (line.takes or line.settles) and not self._closing:
            line.work.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LINGER_S):
                    await line.work.wait()
        return bool(line.takes or line.settles)

    async def _round(self, conn: Connection, bucket: str, line: _Line) -> float:
        """One read and write of the bucket: the settles queued so far, then as many takes,
        in line order, as the bucket has room for. Returns how long to sleep before the next
        round (0: at once, when there is work)."""
        settles, line.settles = line.settles, []
        takes = [t for t in line.takes if not t.granted.done()]

        def change(b: Bucket, now: datetime) -> tuple[int, float]:
            for settle in settles:
                settle.change(b, now)
            for granted, take in enumerate(takes):
                wait = b.take(now, take.need, self.policy)
                if wait > 0:
                    return granted, wait
            return len(takes), 0.0

        try:
            granted, wait = await self._change(conn, bucket, change)
        except _DB_ERRORS as exc:
            # Only this round's changes fail; the connection goes back to the pool (the
            # pool replaces it when it broke), and the next round takes another.
            self._failed(bucket, line, settles, takes, exc)
            raise _RoundFailed from exc
        for settle in settles:
            _resolve(settle.done)
        for take in takes[:granted]:
            if take.granted.done():
                # Its caller gave up while the budget was being taken: give it all back.
                line.settles.append(_Settle(self._give_back_all(take), _orphan()))
            else:
                take.granted.set_result(None)
        self._drop(line, set(map(id, takes[:granted])))
        if wait <= 0 or not line.takes:
            return 0.0
        head = takes[granted]
        if head.granted.done():
            return 0.0
        if time.monotonic() - head.started + wait > self.max_wait_s:
            _resolve(
                head.granted,
                BudgetExhausted(
                    f"Claude's rate limit budget is spent for the next {wait:.0f} s",
                    delay=wait,
                    kind="rate_limited",
                ),
            )
            self._drop(line, {id(head)})
            return 0.0
        # Everyone waiting wakes at about the same moment: spread them a little.
        return max(min(wait, MAX_SLEEP_S) * random.uniform(1.0, 1.1), 0.01)

    def _failed(
        self,
        bucket: str,
        line: _Line,
        settles: list[_Settle],
        takes: list[_Take],
        exc: BaseException,
    ) -> None:
        """The database could not be asked: the takes fail (their jobs retry later), and the
        settles are dropped (the bucket stays more cautious than it needs to be)."""
        if settles:
            log.warning("rate_limit_not_settled", bucket=bucket, error=str(exc))
        for settle in settles:
            _resolve(settle.done)
        for take in takes:
            _resolve(
                take.granted,
                RetryLater(f"Could not take Claude's rate limit budget from the database: {exc}"),
            )
        self._drop(line, set(map(id, takes)))

    @staticmethod
    def _drop(line: _Line, taken: set[int]) -> None:
        """Take out of the line the takes served, and those whose caller gave up."""
        line.takes = deque(t for t in line.takes if id(t) not in taken and not t.granted.done())

    def _give_back_all(self, take: _Take) -> Callable[[Bucket, datetime], None]:
        def settle(b: Bucket, now: datetime) -> None:
            b.give_back(now, take.need, self.policy)

        return settle

    @staticmethod
    async def _change(conn: Connection, bucket: str, change: Callable[[Bucket, datetime], T]) -> T:
        """Read the bucket, apply `change`, and write it back unless another process wrote it
        in between (then again, from what that one wrote): two round trips, no lock held
        across them. `change` may run more than once and must only change the bucket."""
        while True:
            row = await conn.fetchrow(Q.read_bucket, bucket)
            if row is None:
                await conn.execute(Q.create_bucket, bucket)
                continue
            state = Bucket.from_row(row)
            result = change(state, row["now"])
            saved = await conn.execute(Q.save_bucket, bucket, *state.columns(), row["version"])
            if saved == "UPDATE 1":
                return result


class _RoundFailed(Exception):
    """A round's read or write of the bucket failed; its changes have been told so."""


def _orphan() -> asyncio.Future[None]:
    """A future nobody waits for."""
    return asyncio.get_running_loop().create_future()
