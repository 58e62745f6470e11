"""The worker: one LISTEN connection wakes a dispatcher that claims jobs into actors."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import uuid
from dataclasses import dataclass, field

from service.jobs.actor import RetryPolicy, StopReason, run_actor
from service.jobs.completer import Completer
from service.jobs.deadlines import Deadlines
from service.jobs.duties import Backoff, Duty
from service.jobs.leases import Heartbeat, Reaper, Registration
from service.jobs.listener import Listener
from service.jobs.model import Job
from service.jobs.registry import Registry
from service.jobs.retention import Pruner
from service.jobs.store import JobStore, WorkerInfo
from service.jobs.text import TextPublisher
from service.logs import get_logger
from service.metrics import Metrics

log = get_logger(__name__)

NEW_JOBS_CHANNEL = "ai_jobs_new"
CANCEL_CHANNEL = "ai_jobs_cancel"
ORPHAN_MESSAGE = "The database restarted; queued to run again"
# The concurrency from which a worker would keep two claims in flight (see Worker): none.
# Measured side by side, two claims for half the slots each were slower than one for all of
# them (20,000 no-op jobs: 1,000-2,000 against 5,300 jobs/s at concurrency 10, 8,400 against
# 8,700 at 50): smaller claims come more often, and each plans the fair claim afresh.
TWO_CLAIMS_FROM: int | None = None


@dataclass(frozen=True)
class WorkerOptions:
    concurrency: int = 10
    poll_interval_s: float = 5.0
    lease_s: float = 60.0
    heartbeat_s: float = 15.0
    reap_interval_s: float = 5.0
    shutdown_grace_s: float = 30.0
    retention_s: float | None = None
    prune_interval_s: float = 600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # How often the LISTEN connection proves itself with a round trip.
    listener_check_s: float = 10.0
    # Claim round robin between owners (created_by); off: oldest first, whoever the owner.
    fair_share: bool = True
    # At most this many of one owner's jobs run at once across the fleet (fair share only);
    # None: no cap.
    user_concurrency: int | None = None


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Claims due jobs into at most `concurrency` actors, one coroutine each.

    Wakes on NOTIFY, when an actor frees a slot while more work may wait, and every
    `poll_interval_s` regardless, so a missed notification delays a job but never loses it.
    """

    def __init__(
        self,
        dsn: str,
        store: JobStore,
        registry: Registry,
        options: WorkerOptions,
        worker_id: str | None = None,
        metrics: Metrics | None = None,
        text: TextPublisher | None = None,
    ) -> None:
        self.worker_id = worker_id or new_worker_id()
        self.http_port: int | None = None
        self.metrics = metrics or Metrics()
        self.metrics.gauge_from(
            "aijobs_jobs_in_flight", "Jobs this worker runs now", lambda: len(self._actors)
        )
        self.metrics.counter_from(
            "aijobs_listener_reconnects",
            "Reconnects of this worker's LISTEN connection",
            lambda: self.listener.reconnects,
        )
        self.options = options
        # Where the jobs' ephemeral text goes (None: AIJOBS_STREAM_DELTAS=off).
        self.text = text
        if text is not None:
            self.metrics.counter_from(
                "aijobs_text_sends",
                "Statements that sent the running jobs' text (NOTIFY, at most every 100 ms)",
                lambda: text.sends,
            )
            self.metrics.counter_from(
                "aijobs_text_notifications",
                "Notifications those statements sent (one per 7,800 bytes of text or less)",
                lambda: text.notifications,
            )
        self._store = store
        self._completer = Completer(store)
        self._registry = registry
        # Claims in flight at once: two, each for at most half the slots, so that one is in
        # the database while the other's jobs start; one when the slots are few, or a cap
        # per owner is to be exact (concurrent claims cannot see each other's jobs).
        two = (
            TWO_CLAIMS_FROM is not None
            and options.concurrency >= TWO_CLAIMS_FROM
            and options.user_concurrency is None
        )
        self._lanes = 2 if two else 1
        self._claim_cap = -(-options.concurrency // self._lanes)
        self._wakeups = [asyncio.Event() for _ in range(self._lanes)]
        self._claiming = 0  # slots the claims in flight may fill
        self._claims_in_flight = 0
        self._claim_finished = asyncio.Event()
        self._stopping = asyncio.Event()
        self._maybe_more = True
        self._actors: dict[uuid.UUID, asyncio.Task[None]] = {}
        # The (job, attempt)s whose processor runs: what `concurrency` limits. An actor whose
        # processor has returned only waits for its outcome to be written, and frees its slot.
        self._processing: set[tuple[uuid.UUID, int]] = set()
        # The attempt each actor runs: its lease is renewed for that attempt only.
        self._attempts: dict[uuid.UUID, int] = {}
        self._stop_reasons: dict[object, str] = {}
        # The time limit of each running processor, all kept by one timer.
        self._deadlines: Deadlines[tuple[uuid.UUID, int]] = Deadlines(self._on_timed_out)
        self._dispatchers: list[asyncio.Task[None]] = []
        self.listener = Listener(
            dsn,
            [NEW_JOBS_CHANNEL, CANCEL_CHANNEL],
            self._on_notify,
            on_connect=self._on_listener_connect,
            pool=store.pool,
            health_interval_s=options.listener_check_s,
        )
        self._dispatch_duty = Duty("dispatcher", options.poll_interval_s)
        # Set when the database may have been away: the next claim first hands back what the
        # database says this worker holds and it does not run (see JobStore.release_orphans).
        self._reconcile = False
        self._heartbeat = Heartbeat(
            store,
            self.worker_id,
            options.lease_s,
            options.heartbeat_s,
            running=lambda: list(self._attempts.items()),
            on_lost=self._on_lease_lost,
        )
        self._reaper = Reaper(store, options.reap_interval_s, on_requeued=self.wake)
        self._pruner = (
            Pruner(store, options.retention_s, options.prune_interval_s)
            if options.retention_s is not None
            else None
        )
        self._registration = Registration(
            store,
            WorkerInfo(
                self.worker_id,
                socket.gethostname(),
                os.getpid(),
                options.concurrency,
                tuple(sorted(registry)),
            ),
            options.heartbeat_s,
        )

    @property
    def running_jobs(self) -> list[uuid.UUID]:
        return list(self._actors)

    @property
    def duties(self) -> list[Duty]:
        """Every background duty of the worker, for /readyz."""
        periodic = [self._registration, self._heartbeat, self._reaper, self._pruner]
        return [
            self._dispatch_duty,
            self.listener.duty,
            *(p.duty for p in periodic if p is not None),
            self._completer.duty,
            self._store.progress_duty,
        ]

    def wake(self) -> None:
        self._maybe_more = True
        self._wake_lanes()

    def _wake_lanes(self) -> None:
        for wakeup in self._wakeups:
            wakeup.set()

    async def start(self) -> None:
        self._stopping.clear()
        await self._registration.start()
        await self.listener.start()
        if self.text is not None:
            await self.text.start()
        await self._heartbeat.start()
        await self._reaper.start()
        if self._pruner is not None:
            await self._pruner.start()
        self._dispatchers = [
            asyncio.create_task(self._dispatch_loop(lane), name=f"dispatcher-{lane}")
            for lane in range(self._lanes)
        ]
        log.info(
            "worker_started",
            worker_id=self.worker_id,
            concurrency=self.options.concurrency,
            job_types=sorted(self._registry),
        )

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop claiming, let running actors finish within the grace period, then release
        what is still running back to pending without counting the attempt."""
        grace = self.options.shutdown_grace_s if grace_s is None else grace_s
        self._stopping.set()
        self._wake_lanes()
        for dispatcher in self._dispatchers:
            with contextlib.suppress(asyncio.CancelledError):
                await dispatcher
        self._dispatchers = []
        running = list(self._actors.values())
        if running:
            log.info("worker_draining", running=len(running), grace_s=grace)
            _, still_running = await asyncio.wait(running, timeout=grace)
            for task in still_running:
                task.cancel()
            if still_running:
                await asyncio.wait(still_running)
        self._deadlines.close()
        await self._completer.idle()
        await self._store.idle()
        if self.text is not None:
            await self.text.stop()
        if self._pruner is not None:
            await self._pruner.stop()
        await self._reaper.stop()
        await self._heartbeat.stop()
        await self.listener.stop()
        await self._registration.stop()
        log.info("worker_stopped", worker_id=self.worker_id)

    # -- wake-ups -----------------------------------------------------------------------

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == CANCEL_CHANNEL:
            with contextlib.suppress(ValueError):
                self._stop_actor(uuid.UUID(payload), StopReason.CANCELLED)
            return
        self.wake()

    def _on_listener_connect(self) -> None:
        # Notifications sent while we were away are lost: catch up from the table. The
        # database may have restarted meanwhile, and lost what we wrote last.
        self._reconcile = True
        self.wake()

    def _on_lease_lost(self, job_id: uuid.UUID) -> None:
        self._stop_actor(job_id, StopReason.LEASE_LOST)

    def _on_timed_out(self, slot: tuple[uuid.UUID, int]) -> None:
        job_id, attempt = slot
        if slot in self._processing and self._attempts.get(job_id) == attempt:
            self._stop_actor(job_id, StopReason.TIMED_OUT)

    def _stop_actor(self, job_id: uuid.UUID, reason: str) -> None:
        """Stop an actor whose job is no longer ours to finish; it writes nothing more."""
        task = self._actors.get(job_id)
        if task is not None and not task.done():
            # Keyed by the attempt too: a reason left behind by an earlier actor of the job
            # (stopped while it waited for a write) never applies to a later one.
            self._stop_reasons[(job_id, self._attempts[job_id])] = reason
            task.cancel()

    # -- the claim loop -----------------------------------------------------------------

    async def _dispatch_loop(self, lane: int) -> None:
        """One claim loop (a lane); two of them keep two claims in flight."""
        if lane == 0:
            self._dispatch_duty.ran()
        wakeup = self._wakeups[lane]
        backoff = Backoff(0.1, self.options.poll_interval_s)
        while not self._stopping.is_set():
            try:
                more = await self._claim_once(lane)
            except Exception as exc:
                # Whatever it is (the database away, a connection the driver left in a state
                # it cannot leave, a fault of ours), the claim loop lives on and tries again.
                self._reconcile = True
                wait = backoff.next()
                self._dispatch_duty.failed(exc, retry_in_s=round(wait, 3))
                await self._wait(wakeup, wait)
                continue
            if more is None:  # the first lane has orphans to hand back first
                await self._wait(wakeup, self.options.poll_interval_s)
                continue
            self._dispatch_duty.ran()
            backoff.reset()
            if not more:
                await self._wait(wakeup, self.options.poll_interval_s)

    async def _claim_once(self, lane: int) -> bool | None:
        """Claim into the free slots; True when more work may be waiting at once; None when
        this lane must wait for the first to hand back the orphans."""
        if self._reconcile:
            if lane != 0:
                # The first lane hands back the orphans; until it has, no claim.
                self._wakeups[0].set()
                self._wakeups[lane].clear()
                return None
            # The running jobs must be all the jobs this worker holds: no claim in flight.
            while self._claims_in_flight:
                self._claim_finished.clear()
                await self._claim_finished.wait()
            orphans = await self._store.release_orphans(
                self.worker_id, list(self._attempts.items()), ORPHAN_MESSAGE
            )
            self._reconcile = False
            self._wake_lanes()
            if orphans:
                log.warning("jobs_released_after_outage", count=len(orphans))
        limit = min(self._free_slots() - self._claiming, self._claim_cap)
        self._wakeups[lane].clear()
        if limit <= 0:
            return False
        self._claiming += limit
        self._claims_in_flight += 1
        try:
            jobs = await self._store.claim(
                limit,
                self.worker_id,
                self.options.lease_s,
                fair_share=self.options.fair_share,
                per_owner=self.options.user_concurrency,
            )
            for job in jobs:
                self._spawn(job)
        finally:
            self._claiming -= limit
            self._claims_in_flight -= 1
            self._claim_finished.set()
        self._maybe_more = len(jobs) == limit
        return self._maybe_more

    def _free_slots(self) -> int:
        concurrency = self.options.concurrency
        # Actors writing their outcome hold no slot, but a database slow to take the writes
        # must not let finished jobs pile up without bound: at most `concurrency` of them.
        return min(concurrency - len(self._processing), 2 * concurrency - len(self._actors))

    async def _wait(self, wakeup: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await wakeup.wait()

    def _spawn(self, job: Job) -> None:
        # An actor of an earlier attempt may still run here (its lease ran out while the
        # database was away, and we claimed the job again): it must stop writing.
        self._stop_actor(job.id, StopReason.LEASE_LOST)
        metrics = self.metrics
        metrics.of(metrics.jobs_started, job.job_type).inc()
        if job.started_at is not None:
            waited = (job.started_at - job.run_after).total_seconds()
            metrics.of(metrics.queue_wait, job.job_type).observe(max(waited, 0.0))
        task = asyncio.create_task(
            run_actor(
                job,
                self._store,
                self._completer,
                self._registry,
                self.options.retry,
                self._stop_reasons,
                self.metrics,
                functools.partial(self._on_processed, (job.id, job.attempts)),
                released=self.wake,
                text=self.text,
            ),
            name=f"actor:{job.id}",
        )
        self._actors[job.id] = task
        self._attempts[job.id] = job.attempts
        self._processing.add((job.id, job.attempts))
        job_type = self._registry.get(job.job_type)
        if job_type is not None:
            self._deadlines.add((job.id, job.attempts), job_type.timeout_s)
        task.add_done_callback(functools.partial(self._on_actor_done, job.id, job.attempts))

    def _on_processed(self, slot: tuple[uuid.UUID, int]) -> None:
        self._processing.discard(slot)
        self._deadlines.discard(slot)
        if self._maybe_more or self.options.user_concurrency is not None:
            self._wake_lanes()

    def _on_actor_done(self, job_id: uuid.UUID, attempt: int, task: asyncio.Task[None]) -> None:
        self._processing.discard((job_id, attempt))
        self._deadlines.discard((job_id, attempt))
        self._stop_reasons.pop((job_id, attempt), None)
        if self._actors.get(job_id) is task:
            del self._actors[job_id]
            self._attempts.pop(job_id, None)
        # Under a cap per owner, a claim that came back short may find more once one of an
        # owner's jobs has finished.
        if self._maybe_more or self.options.user_concurrency is not None:
            self._wake_lanes()
