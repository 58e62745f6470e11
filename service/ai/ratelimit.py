"""One rate limit budget for every worker process, kept in Postgres.

Anthropic limits requests, input tokens and output tokens per minute for the whole
organisation. Each model call takes its share of a token bucket (one row of ai_rate_limits
per model) before it is sent, waiting while the bucket is short rather than collecting 429s,
and settles after the answer: unused tokens go back, the anthropic-ratelimit-* headers
correct the bucket and teach the limits when none are configured, and a 429 that slipped
through anyway pauses every worker until its retry-after.

The bucket holds at most `burst` of a minute's budget and refills the rest evenly over the
minute, so no 60-second window, sliding or fixed, ever sees more than the limit, and calls go
out evenly: Anthropic may enforce a per-minute limit over shorter intervals (60 a minute as one
a second), so bursts are what draws 429s. It plans for `share` of each limit, leaving room for
clock and network jitter and for other users of the same organisation. At saturation it sends
share x (1 - burst) of each limit.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg

from service.ai.analyzer import Usage
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

# What a refill computed to a rounding error short of a whole request still pays for it.
_EPSILON = 1e-9

_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
_HEADER = "anthropic-ratelimit-{}-{}"
_HEADER_NAMES = {
    "requests": "requests",
    "input_tokens": "input-tokens",
    "output_tokens": "output-tokens",
}

T = TypeVar("T")


class BudgetExhausted(RetryLater):
    """The budget will not have room for this call before the longest wait allowed: the job
    goes back to the queue until then, rather than hold a worker slot."""


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


class RateLimiter:
    """The budget every worker shares. One per process; any number of processes."""

    def __init__(self, pool: asyncpg.Pool, policy: Policy, max_wait_s: float = 120.0) -> None:
        self.pool = pool
        self.policy = policy
        self.max_wait_s = max_wait_s
        # The calls of this process wait their turn first come, first served, and only the
        # first of them asks the shared bucket: waiters that all woke together to ask would
        # make the next free slot a lottery, and leave some calls waiting far longer.
        self._turns: dict[str, asyncio.Lock] = {}

    async def acquire(self, bucket: str, input_tokens: int, output_tokens: int) -> Reservation:
        """Wait until the bucket has room for one call of this size, and take it.

        Raises RetryLater when the wait would be longer than `max_wait_s` (the job goes back
        to the queue rather than hold a worker slot), or when the database cannot be asked.
        """
        started = time.monotonic()
        turn = self._turns.setdefault(bucket, asyncio.Lock())
        try:
            async with asyncio.timeout(self.max_wait_s):
                await turn.acquire()
        except TimeoutError:
            raise BudgetExhausted(
                f"Other calls have waited for Claude's rate limit budget for over "
                f"{self.max_wait_s:.0f} s",
                kind="rate_limited",
            ) from None
        try:
            return await self._take(bucket, input_tokens, output_tokens, started)
        finally:
            turn.release()

    async def _take(
        self, bucket: str, input_tokens: int, output_tokens: int, started: float
    ) -> Reservation:
        need = {"requests": 1.0, "input_tokens": input_tokens, "output_tokens": output_tokens}
        while True:
            try:
                wait = await self._change(bucket, lambda b, now: b.take(now, need, self.policy))
            except _DB_ERRORS as exc:
                raise RetryLater(
                    f"Could not take Claude's rate limit budget from the database: {exc}"
                ) from exc
            if wait <= 0:
                return Reservation(bucket, input_tokens, output_tokens)
            waited = time.monotonic() - started
            if waited + wait > self.max_wait_s:
                raise BudgetExhausted(
                    f"Claude's rate limit budget is spent for the next {wait:.0f} s",
                    delay=wait,
                    kind="rate_limited",
                )
            # Everyone waiting wakes at about the same moment: spread them a little.
            nap = min(wait, MAX_SLEEP_S)
            await asyncio.sleep(max(nap * random.uniform(1.0, 1.1), 0.01))

    async def answered(
        self, reservation: Reservation, usage: Usage, headers: Mapping[str, str] | None
    ) -> None:
        """A call was answered: give back what it did not use, and learn from its headers.

        Cache reads do not count against the input tokens limit; cache writes do.
        """
        used_input = usage.input_tokens + usage.cache_creation_input_tokens
        unused = {
            "input_tokens": reservation.input_tokens - used_input,
            "output_tokens": reservation.output_tokens - usage.output_tokens,
        }

        def settle(b: Bucket, now: datetime) -> None:
            b.learn(now, RateHeaders.parse(headers), self.policy)
            b.give_back(now, unused, self.policy)

        await self._settle(reservation.bucket, settle)

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

    async def _settle(self, bucket: str, change: Callable[[Bucket, datetime], None]) -> None:
        try:
            await self._change(bucket, change)
        except _DB_ERRORS as exc:
            # The bucket stays more cautious than it needs to be until the next answer.
            log.warning("rate_limit_not_settled", bucket=bucket, error=str(exc))

    async def _change(self, bucket: str, change: Callable[[Bucket, datetime], T]) -> T:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(Q.lock_bucket, bucket)
            if row is None:
                await conn.execute(Q.create_bucket, bucket)
                row = await conn.fetchrow(Q.lock_bucket, bucket)
                assert row is not None
            state = Bucket.from_row(row)
            result = change(state, row["now"])
            await conn.execute(Q.save_bucket, bucket, *state.columns())
        return result
