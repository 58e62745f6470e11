"""One actor runs one claimed job to an outcome and records it."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from service.db.errors import DATABASE_UNAVAILABLE
from service.jobs.completer import Completer
from service.jobs.context import JobContext
from service.jobs.duties import Backoff
from service.jobs.model import Job, PermanentFailure, RetryLater
from service.jobs.registry import Registry
from service.jobs.store import JobStore, LeaseLost
from service.jobs.text import TextPublisher
from service.logs import bind_job, get_logger
from service.metrics import Metrics

log = get_logger(__name__)
T = TypeVar("T")

# An outcome that could not be written is written again this often at most while the
# database is away: once it is back, a worker's jobs are settled within about this long.
SETTLE_RETRY_MAX_S = 1.0
RELEASED_MESSAGE = "The database connection was lost; queued to run again"

_RETRY_LABELS = {
    "rate_limited": "Rate limited",
    "overloaded": "Claude is overloaded",
    "timeout": "Timed out",
}


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float = 2.0
    max_s: float = 300.0
    # A job snoozed by rate limits (RetryLater.snooze) fails once its waits add up to this.
    max_wait_s: float = 3600.0

    def delay(self, attempt: int, requested: float | None) -> float:
        """Seconds to wait before the next attempt.

        The server's retry-after wins when it gives one, even past `max_s`: retrying sooner
        only earns another refusal. Otherwise exponential backoff with jitter over the upper
        half, so that retries of many jobs spread out.
        """
        if requested is not None:
            return min(max(requested, 0.0), MAX_RETRY_AFTER_S)
        ceiling = min(self.max_s, self.base_s * (2 ** max(attempt - 1, 0)))
        return random.uniform(ceiling / 2, ceiling)


# A retry-after longer than this is taken as a mistake rather than honoured.
MAX_RETRY_AFTER_S = 3600.0


class StopReason:
    SHUTDOWN = "shutdown"
    LEASE_LOST = "lease_lost"
    CANCELLED = "cancelled"
    # Past the job type's time limit: the job is retried.
    TIMED_OUT = "timed_out"


async def run_actor(
    job: Job,
    store: JobStore,
    completer: Completer,
    registry: Registry,
    retry_policy: RetryPolicy,
    stop_reasons: dict[object, str],
    metrics: Metrics,
    processed: Callable[[], None] = lambda: None,
    released: Callable[[], None] = lambda: None,
    text: TextPublisher | None = None,
) -> None:
    """Run `job` and write its outcome. Never raises, except CancelledError.

    The job type's time limit is kept by the caller: it cancels the actor's task with the
    stop reason TIMED_OUT (in `stop_reasons`) while `processed` has not been called yet.

    `processed` is called once the processor has returned or raised, before the outcome is
    written: from then on the actor only waits for the database, and its slot can go to the
    next job.

    The database away is never the job's fault. When its processor meets that (in its own
    reads, its progress, its checkpoints), the job is handed back to pending without counting
    the attempt, to run again from its checkpoint, and `released` is called. An outcome the
    database could not take is written again, every second at most, until it does; the
    heartbeat keeps the lease meanwhile, and the writes are fenced by it, so that none lands
    twice or on a job that is no longer ours.
    """
    try:
        outcome = await _run(
            job, store, completer, registry, retry_policy, stop_reasons, processed, released, text
        )
    finally:
        if text is not None:
            text.forget(job.id, job.attempts)
    kind = job.job_type
    metrics.of(metrics.job_duration, kind).observe(time.monotonic() - outcome.started)
    counter = {
        "completed": metrics.jobs_completed,
        "failed": metrics.jobs_failed,
        "retried": metrics.jobs_retried,
        "snoozed": metrics.jobs_snoozed,
    }.get(outcome.name)
    if counter is not None:
        metrics.of(counter, kind).inc()


@dataclass
class _Outcome:
    started: float
    name: str = "none"


async def _run(
    job: Job,
    store: JobStore,
    completer: Completer,
    registry: Registry,
    retry_policy: RetryPolicy,
    stop_reasons: dict[object, str],
    processed: Callable[[], None],
    released: Callable[[], None],
    text: TextPublisher | None,
) -> _Outcome:
    # The actor is a task of its own: what it binds lives in its copy of the context and
    # goes with it, into every line it and its processor log.
    bind_job(str(job.id), job.job_type, job.attempts)
    job_log = log
    started = time.monotonic()
    outcome = _Outcome(started)
    job_log.debug("job_started", entity_id=job.entity_id, max_attempts=job.max_attempts)
    job_type = registry.get(job.job_type)
    try:
        if job_type is None:
            raise PermanentFailure(f"No processor is registered for job type {job.job_type!r}")
        ctx = JobContext(job, store, job_log, text)
        try:
            completion = await job_type.run(ctx)
        except asyncio.CancelledError:
            # The caller keeps the job type's time limit (see Worker): past it, the actor is
            # cancelled with the reason TIMED_OUT, and the job is retried.
            if stop_reasons.get((job.id, job.attempts)) != StopReason.TIMED_OUT:
                raise
            del stop_reasons[(job.id, job.attempts)]
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            limit_s = job_type.timeout_s
            raise RetryLater(
                f"The job did not finish within its {limit_s:.0f} s time limit", kind="timeout"
            ) from None
        finally:
            processed()
        if text is not None:
            # Followers get the whole text before the event that completes the job.
            await text.sent(job.id)
        await _settle(
            lambda: completer.complete(
                job, completion.result, completion.message, completion.apply
            ),
            job_log,
        )
        job_log.info("job_completed", duration_s=round(time.monotonic() - started, 3))
        outcome.name = "completed"
    except RetryLater as exc:
        outcome.name = await _retry_or_fail(job, store, retry_policy, exc, job_log)
    except PermanentFailure as exc:
        await _fail(job, store, exc.reason, job_log)
        outcome.name = "failed"
    except LeaseLost:
        job_log.warning("job_lease_lost")
    except asyncio.CancelledError:
        reason = stop_reasons.pop((job.id, job.attempts), StopReason.SHUTDOWN)
        if reason == StopReason.SHUTDOWN:
            try:
                await store.release(job)
                job_log.info("job_released")
            except Exception as release_error:
                job_log.warning("job_release_failed", error=str(release_error))
        else:
            job_log.warning("job_stopped", reason=reason)
        raise
    except DATABASE_UNAVAILABLE as exc:
        # Raised by the processor: what it did since its last checkpoint is lost with the
        # connection, and the job runs again.
        job_log.warning("job_interrupted", reason="database unavailable", error=_describe(exc))
        try:
            await _settle(lambda: store.release(job, RELEASED_MESSAGE), job_log)
            job_log.info("job_released")
            outcome.name = "released"
            released()
        except LeaseLost:
            job_log.warning("job_lease_lost")
    except Exception as exc:
        job_log.exception("job_crashed")
        await _fail(
            job,
            store,
            f"Internal error while running the job: {type(exc).__name__}: {exc}",
            job_log,
        )
        outcome.name = "failed"
    return outcome


async def _retry_or_fail(
    job: Job,
    store: JobStore,
    policy: RetryPolicy,
    exc: RetryLater,
    job_log: structlog.typing.FilteringBoundLogger,
) -> str:
    if exc.snooze:
        return await _snooze(job, store, policy, exc, job_log)
    if job.attempts >= job.max_attempts:
        await _fail(
            job,
            store,
            f"{exc.reason} (gave up after {job.attempts} of {job.max_attempts} attempts)",
            job_log,
        )
        return "failed"
    delay = policy.delay(job.attempts, exc.delay)
    label = _RETRY_LABELS.get(exc.kind, "Temporary failure")
    message = (
        f"{label}; retrying in {delay:.0f} s (attempt {job.attempts + 1} of {job.max_attempts})"
    )
    try:
        await _settle(lambda: store.retry(job, delay, message, exc.reason), job_log)
        job_log.warning("job_retry_scheduled", reason=exc.reason, delay_s=round(delay, 3))
    except LeaseLost:
        job_log.warning("job_lease_lost")
    except Exception as err:
        # The lease runs out and the reaper returns the job; nothing is lost.
        job_log.warning("job_outcome_not_recorded", error=str(err))
    return "retried"


async def _snooze(
    job: Job,
    store: JobStore,
    policy: RetryPolicy,
    exc: RetryLater,
    job_log: structlog.typing.FilteringBoundLogger,
) -> str:
    """A job refused for now by a rate limit or an overloaded provider waits without using an
    attempt, until its waits add up to `policy.max_wait_s`."""
    waited = job.rate_limit_wait_s
    if waited >= policy.max_wait_s:
        await _fail(
            job,
            store,
            f"{exc.reason} (gave up after waiting {waited:.0f} s in all for the rate limit or "
            f"capacity to allow it; AIJOBS_MAX_WAIT is {policy.max_wait_s:.0f} s)",
            job_log,
        )
        return "failed"
    delay = min(policy.delay(job.attempts, exc.delay), policy.max_wait_s - waited)
    label = _RETRY_LABELS.get(exc.kind, "Temporary failure")
    message = f"{label}; waiting {delay:.0f} s (a wait costs no attempt)"
    try:
        await _settle(lambda: store.snooze(job, delay, message, exc.reason), job_log)
        job_log.info("job_snoozed", reason=exc.reason, delay_s=round(delay, 3))
    except LeaseLost:
        job_log.warning("job_lease_lost")
    except Exception as err:
        # The lease runs out and the reaper returns the job; nothing is lost.
        job_log.warning("job_outcome_not_recorded", error=str(err))
    return "snoozed"


async def _fail(
    job: Job, store: JobStore, reason: str, job_log: structlog.typing.FilteringBoundLogger
) -> None:
    try:
        await _settle(lambda: store.fail(job, reason), job_log)
        job_log.warning("job_failed", reason=reason)
    except LeaseLost:
        job_log.warning("job_lease_lost")
    except Exception as err:
        job_log.warning("job_outcome_not_recorded", error=str(err))


async def _settle(
    write: Callable[[], Awaitable[T]], job_log: structlog.typing.FilteringBoundLogger
) -> T:
    """`write()`, again and again while the database is unavailable, until it answers."""
    backoff = Backoff(0.05, SETTLE_RETRY_MAX_S)
    waited_since: float | None = None
    while True:
        try:
            result = await write()
        except DATABASE_UNAVAILABLE as exc:
            if waited_since is None:
                waited_since = time.monotonic()
                job_log.warning("job_outcome_waits_for_database", error=_describe(exc))
            await asyncio.sleep(backoff.next())
            continue
        if waited_since is not None:
            job_log.info(
                "job_outcome_written_after_wait",
                waited_s=round(time.monotonic() - waited_since, 3),
            )
        return result


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
