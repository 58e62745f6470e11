"""The measurement suite of issue 6: every figure, for aijobs and its references, in one table.

    python -m bench.run [--scale full|tiny] [--runs 3] [--only NAME,...] [--no-profile]

`make bench` runs this in the bench environment (.venv-bench, which also has PgQueuer and
py-spy). Each figure is the median of `--runs` runs, shown with their min and max; ratios are
of medians, taken in the same invocation. The table goes to stdout and, with every run's raw
figures, to bench/results/bench-<time>.json (and latest.json); progress goes to stderr.

References: PgQueuer (the nearest Python peer) where the figure exists for it; the floor
(bench/floor.py, a minimal hand-written asyncpg queue) for the queue figures; a bare aiohttp
handler (the ceiling) for the HTTP figures. PgQueuer is skipped when it is not importable
(the test environment does not have it).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import fairness, http_load, pickup_latency, queues, scale, slow_model, throughput
from bench import profile as profiling
from bench.common import RESULTS, admin_dsn, spread
from service.logs import configure_logging

SECTIONS = ("throughput", "pickup", "slow_model", "fairness", "http", "sse", "scale", "profile")
REFERENCE = "floor"  # for queue figures; "bare" (aiohttp) for HTTP ones

# SSE fan-out lives in bench/sse_fanout.py (written alongside this suite); the runner calls
# its `measure(admin_dsn, subscribers, updates, gap_ms, idle_jobs)`.
SSE_MODULE = "bench.sse_fanout"

# The longest one section may take before it is given up as "not taken" (each normally
# takes 1-4 minutes; every benchmark has time limits of its own as well).
SECTION_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class SsePreset:
    subscribers: tuple[int, ...]
    updates: int
    gap_ms: float


SSE_FULL = SsePreset((1_000, 10_000), updates=100, gap_ms=20.0)
SSE_TINY = SsePreset((20,), updates=5, gap_ms=5.0)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Row:
    """One line of the table: a figure for each system, the ratios, the target."""

    figure: str
    unit: str
    values: dict[str, dict[str, Any]] = field(default_factory=dict)  # system -> spread
    target: str = ""
    met: bool | None = None
    note: str = ""
    higher_is_better: bool = True
    # Why the figure could not be taken (the benchmark failed or ran out of time); None: taken.
    not_taken: str | None = None

    def median(self, system: str) -> float | None:
        cell = self.values.get(system)
        return None if cell is None else float(cell["median"])

    def ratio(self, system: str) -> float | None:
        mine, theirs = self.median("aijobs"), self.median(system)
        if mine is None or theirs is None or theirs == 0:
            return None
        return mine / theirs


@dataclass
class Suite:
    server_dsn: str
    scale: str
    runs: int
    only: set[str]
    raw: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: dict[str, Any] | None = None
    grown_tables: dict[str, Any] | None = None

    @property
    def tiny(self) -> bool:
        return self.scale == "tiny"

    def wants(self, section: str) -> bool:
        return not self.only or section in self.only

    def systems(self) -> list[str]:
        return [s for s in queues.SYSTEMS if queues.available(s)]

    async def repeat(
        self, what: str, run: Callable[[], Awaitable[dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        results = []
        for i in range(self.runs):
            started = time.monotonic()
            result = await run()
            took = time.monotonic() - started
            log(f"{what} run {i + 1}/{self.runs}: {_brief(result)} ({took:.0f} s)")
            results.append(result)
        self.raw.setdefault(what, []).extend(results)
        return results

    async def repeat_once(
        self, what: str, run: Callable[[], Awaitable[dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """One run of `what`, logged and kept like those of `repeat`."""
        started = time.monotonic()
        result = await run()
        log(f"{what}: {_brief(result)} ({time.monotonic() - started:.0f} s)")
        self.raw.setdefault(what, []).append(result)
        return [result]

    # -- sections -------------------------------------------------------------------------

    async def throughput(self) -> None:
        jobs = throughput.jobs_for(self.scale)
        # aijobs as it runs by default (its worker commits asynchronously, its claim is fair
        # between owners), then aijobs with the worker's commits synchronous, as PgQueuer's
        # and the floor's are, then aijobs with the claim in plain order (AIJOBS_FAIR_SHARE=off).
        # A variant: (system, synchronous_commit, fair_share); None: the default.
        Variant = tuple[str, str | None, str | None]
        variants: list[Variant] = [(s, None, None) for s in self.systems()]
        variants.append(("aijobs", "on", None))
        variants.append(("aijobs", None, "off"))
        for concurrency in (10, 50):
            per_variant: dict[Variant, list[float]] = {v: [] for v in variants}
            # Interleaved, so that a noisy minute of the machine hits every system alike.
            for i in range(self.runs):
                for variant in variants:
                    system, synchronous_commit, fair_share = variant
                    started = time.monotonic()
                    result = await throughput.measure(
                        self.server_dsn,
                        system,
                        jobs,
                        concurrency,
                        synchronous_commit=synchronous_commit,
                        fair_share=fair_share,
                    )
                    name = system
                    if synchronous_commit is not None:
                        name += " (sync commit)"
                    if fair_share is not None:
                        name += f" (fair share {fair_share})"
                    log(
                        f"throughput c={concurrency} {name} run {i + 1}/{self.runs}: "
                        f"{_brief(result)} ({time.monotonic() - started:.0f} s)"
                    )
                    self.raw.setdefault(f"throughput_c{concurrency}", []).append(result)
                    per_variant[variant].append(result["jobs_per_s"])
            others = {s: spread(v, 1) for (s, _, _), v in per_variant.items() if s != "aijobs"}
            row = Row(f"no-op throughput, {jobs:,} jobs, concurrency {concurrency}", "jobs/s")
            row.values = {"aijobs": spread(per_variant[("aijobs", None, None)], 1), **others}
            row.target = "≥ 1.5x PgQueuer"
            ratio = row.ratio("pgqueuer")
            row.met = None if ratio is None else ratio >= 1.5
            row.note = "fair share on (the default)"
            self.rows.append(row)
            for label, variant in (
                ("AIJOBS_WORKER_SYNCHRONOUS_COMMIT=on", ("aijobs", "on", None)),
                ("AIJOBS_FAIR_SHARE=off (the claim in plain order)", ("aijobs", None, "off")),
            ):
                row = Row(
                    f"no-op throughput, {jobs:,} jobs, concurrency {concurrency}, "
                    f"aijobs with {label}",
                    "jobs/s",
                )
                row.values = {"aijobs": spread(per_variant[variant], 1), **others}
                self.rows.append(row)

    async def pickup(self) -> None:
        preset = pickup_latency.TINY if self.tiny else pickup_latency.FULL
        p50: dict[str, list[float]] = {s: [] for s in self.systems()}
        p99: dict[str, list[float]] = {s: [] for s in self.systems()}
        for i in range(self.runs):
            for system in self.systems():
                result = await pickup_latency.measure(
                    self.server_dsn, int(preset["jobs"]), float(preset["gap_ms"]), system
                )
                log(f"pickup {system} run {i + 1}/{self.runs}: {_brief(result)}")
                self.raw.setdefault("pickup", []).append(result)
                p50[system].append(result["p50_ms"])
                p99[system].append(result["p99_ms"])
        label = f"pickup latency, {int(preset['jobs'])} dispatches {preset['gap_ms']:g} ms apart"
        row = Row(f"{label}: p50", "ms", higher_is_better=False)
        row.values = {s: spread(v) for s, v in p50.items()}
        row.target = "≤ 0.5x PgQueuer"
        ratio = row.ratio("pgqueuer")
        row.met = None if ratio is None else ratio <= 0.5
        self.rows.append(row)
        row = Row(f"{label}: p99", "ms", higher_is_better=False)
        row.values = {s: spread(v) for s, v in p99.items()}
        row.target = "< 10 ms"
        row.met = float(row.values["aijobs"]["median"]) < 10
        self.rows.append(row)

    async def slow_model(self) -> None:
        preset = slow_model.TINY if self.tiny else slow_model.FULL

        def one(deltas: bool) -> Callable[[], Awaitable[dict[str, Any]]]:
            return lambda: slow_model.measure(
                self.server_dsn,
                jobs=int(preset["jobs"]),
                delay_s=float(preset["delay_s"]),
                concurrency=int(preset["concurrency"]),
                pool_max=int(preset["pool_max"]),
                deltas=deltas,
            )

        # Side by side in each run: the model's text off (calls answer whole), then on (the
        # default: calls stream, and followers get the text as it is written).
        off: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for _ in range(self.runs):
            off += await self.repeat_once("slow_model_deltas_off", one(False))
            results += await self.repeat_once("slow_model", one(True))
        first = results[0]
        row = Row(
            f"slow model: {first['jobs']:,} ai-match jobs, {first['delay_s']:g} s model call, "
            f"concurrency {first['concurrency']}: share of the ideal "
            f"{first['ideal_jobs_per_s']:g} jobs/s",
            "%",
        )
        row.values = {"aijobs": spread([r["share_of_ideal_pct"] for r in results], 1)}
        row.target = "≥ 85%"
        row.met = float(row.values["aijobs"]["median"]) >= 85
        row.note = "jobs/s: " + ", ".join(f"{r['jobs_per_s']:g}" for r in results)
        self.rows.append(row)
        row = Row("slow model: share of the ideal with the text streamed / without", "ratio")
        row.values = {
            "aijobs": spread(
                [
                    r["share_of_ideal_pct"] / o["share_of_ideal_pct"]
                    for r, o in zip(results, off, strict=True)
                ],
                3,
            )
        }
        row.target = "≥ 0.95"
        row.met = float(row.values["aijobs"]["median"]) >= 0.95
        row.note = "without: " + ", ".join(f"{o['share_of_ideal_pct']:g}%" for o in off)
        self.rows.append(row)
        row = Row(
            "slow model: the worker's NOTIFY statements of text per second",
            "/s",
            higher_is_better=False,
        )
        row.values = {"aijobs": spread([r["text_sends_per_s"] for r in results], 1)}
        row.target = "≤ 10"
        row.met = float(row.values["aijobs"]["median"]) <= 10
        row.note = "notifications (payloads) per second: " + ", ".join(
            f"{r['text_notifications_per_s']:g}" for r in results
        )
        self.rows.append(row)
        for pct in ("p50", "p99"):
            samples = [r[f"token_to_sse_{pct}_ms"] for r in results if r[f"token_to_sse_{pct}_ms"]]
            if not samples:
                continue
            row = Row(
                f"slow model: a token leaving the fake to its delta at an SSE follower, {pct}",
                "ms",
                higher_is_better=False,
            )
            row.values = {"aijobs": spread(samples, 1)}
            row.note = f"{first['followers']} followers; tokens: " + ", ".join(
                str(r["token_to_sse_samples"]) for r in results
            )
            self.rows.append(row)
        row = Row("slow model: worker peak RSS (VmHWM)", "MB", higher_is_better=False)
        row.values = {"aijobs": spread([r["worker_peak_rss_mb"] for r in results], 1)}
        row.target = "< 250 MB"
        row.met = float(row.values["aijobs"]["median"]) < 250
        self.rows.append(row)
        row = Row("slow model: worker CPU per job (one model call)", "ms", higher_is_better=False)
        row.values = {"aijobs": spread([r["worker_cpu_ms_per_job"] for r in results], 2)}
        self.rows.append(row)
        # The same jobs and slots, run by `aijobs worker --processes 2`.
        processes = 2
        supervised = await self.repeat(
            "slow_model_processes",
            lambda: slow_model.measure(
                self.server_dsn,
                jobs=int(preset["jobs"]),
                delay_s=float(preset["delay_s"]),
                concurrency=int(preset["concurrency"]),
                pool_max=int(preset["pool_max"]),
                processes=processes,
            ),
        )
        row = Row(
            f"slow model, the same with aijobs worker --processes {processes}: share of the ideal",
            "%",
        )
        row.values = {"aijobs": spread([r["share_of_ideal_pct"] for r in supervised], 1)}
        row.note = "worker CPU ms per job: " + ", ".join(
            f"{r['worker_cpu_ms_per_job']:g}" for r in supervised
        )
        self.rows.append(row)

    async def fairness(self) -> None:
        preset = fairness.TINY if self.tiny else fairness.FULL
        p50: dict[bool, list[float]] = {True: [], False: []}
        p99: dict[bool, list[float]] = {True: [], False: []}
        for i in range(self.runs):
            for fair_share in (True, False):
                result = await fairness.measure(
                    self.server_dsn,
                    fair_share,
                    jobs_a=int(preset["jobs_a"]),
                    jobs_b=int(preset["jobs_b"]),
                    delay_s=float(preset["delay_s"]),
                    concurrency=int(preset["concurrency"]),
                )
                state = "on" if fair_share else "off"
                log(f"fairness {state} run {i + 1}/{self.runs}: {_brief(result)}")
                self.raw.setdefault("fairness", []).append(result)
                p50[fair_share].append(result["b_p50_s"])
                p99[fair_share].append(result["b_p99_s"])
        delay = float(preset["delay_s"])
        label = (
            f"fairness: user B's {preset['jobs_b']} jobs dispatched behind user A's "
            f"{int(preset['jobs_a']):,} ({delay:g} s model call, concurrency "
            f"{preset['concurrency']}), start delay"
        )
        for fair_share in (True, False):
            state = "on" if fair_share else "off"
            for name, values in (("p50", p50[fair_share]), ("p99", p99[fair_share])):
                row = Row(f"{label} {name}, fair share {state}", "s", higher_is_better=False)
                row.values = {"aijobs": spread(values, 2)}
                if fair_share and name == "p99":
                    row.target = f"≤ 2 model calls ({2 * delay:g} s)"
                    row.met = float(row.values["aijobs"]["median"]) <= 2 * delay
                self.rows.append(row)

    async def http(self) -> None:
        preset = http_load.TINY if self.tiny else http_load.FULL
        results = await self.repeat(
            "http",
            lambda: http_load.measure(
                self.server_dsn,
                connections=int(preset["connections"]),
                duration_s=float(preset["duration_s"]),
                warmup_s=float(preset["warmup_s"]),
                mappings=int(preset["mappings"]),
                users=int(preset["users"]),
            ),
        )
        connections = int(preset["connections"])
        labels = {
            "dispatch": f"HTTP dispatch POST, {connections} connections",
            "poll": "HTTP poll GET /api/ai-jobs/{id} (200)",
            "poll_conditional": "HTTP poll GET with If-None-Match (304)",
        }
        for name, label in labels.items():
            row = Row(label, "req/s")
            row.values = {
                "aijobs": spread([r[f"{name}_aijobs"]["rps"] for r in results], 0),
                "bare": spread([r[f"{name}_bare"]["rps"] for r in results], 0),
            }
            if name == "dispatch":
                row.target = "≥ 40% of bare aiohttp"
                ratio = row.ratio("bare")
                row.met = None if ratio is None else ratio >= 0.4
            unexpected = max(r[f"{name}_aijobs"]["unexpected_pct"] for r in results)
            if unexpected:
                row.note = f"{unexpected}% of aijobs' answers had another status"
            self.rows.append(row)

    async def sse(self) -> None:
        try:
            module = importlib.import_module(SSE_MODULE)
        except ImportError as exc:
            self.notes.append(f"SSE fan-out skipped: {SSE_MODULE} is not there ({exc})")
            return
        preset = SSE_TINY if self.tiny else SSE_FULL
        measure: Callable[..., Awaitable[dict[str, Any]]] = module.measure
        for subscribers in preset.subscribers:

            def one(n: int = subscribers) -> Awaitable[dict[str, Any]]:
                return measure(
                    self.server_dsn, subscribers=n, updates=preset.updates, gap_ms=preset.gap_ms
                )

            label = f"SSE, {subscribers:,} subscribers: progress commit to delivery"
            try:
                results = await self.repeat(f"sse_{subscribers}", one)
            except Exception as exc:
                self.record_not_taken(label, exc)
                continue
            row = Row(f"{label}, p50", "ms", higher_is_better=False)
            row.values = {"aijobs": spread([r["p50_ms"] for r in results])}
            self.rows.append(row)
            row = Row(f"{label}, p99", "ms", higher_is_better=False)
            row.values = {"aijobs": spread([r["p99_ms"] for r in results])}
            if subscribers == 1_000 or self.tiny:
                row.target = "< 50 ms"
                row.met = float(row.values["aijobs"]["median"]) < 50
            self.rows.append(row)
            row = Row(
                f"SSE, {subscribers:,} subscribers: API RSS per idle subscriber",
                "KB",
                higher_is_better=False,
            )
            row.values = {"aijobs": spread([r["rss_kb_per_subscriber"] for r in results], 1)}
            row.target = "< 20 KB"
            row.met = float(row.values["aijobs"]["median"]) < 20
            self.rows.append(row)
            row = Row(
                f"SSE, {subscribers:,} subscribers: API exit after SIGTERM",
                "s",
                higher_is_better=False,
            )
            row.values = {"aijobs": spread([r["shutdown_s"] for r in results])}
            row.target = "< 5 s"
            row.met = float(row.values["aijobs"]["median"]) < 5
            self.rows.append(row)

    async def scale_section(self) -> None:
        preset = scale.TINY if self.tiny else scale.FULL
        result = await scale.measure(self.server_dsn, preset, self.runs)
        self.raw["scale"] = result
        figures = result["figures"]
        size = (
            f"{result['finished']:,} finished jobs and their events, "
            f"{result['pending']:,} scheduled for later"
        )

        def compared(label: str, unit: str, key: str, digits: int, faster: bool) -> None:
            row = Row(f"scale: {label}, with {size}", unit, higher_is_better=faster)
            row.values = {
                "aijobs": spread(figures["loaded"][key], digits),
                "empty": spread(figures["empty"][key], digits),
            }
            ratio = row.ratio("empty")
            if faster:
                row.target = "≥ 0.9x empty tables"
                row.met = None if ratio is None else ratio >= 0.9
            else:  # a time: 0.9x the speed is 1/0.9 the time
                row.target = "≤ 1.11x empty tables"
                row.met = None if ratio is None else ratio <= 1 / 0.9
            self.rows.append(row)

        jobs = f"{result['drain_jobs']:,} jobs, concurrency {result['concurrency']}"
        compared(f"no-op throughput, {jobs}", "jobs/s", "jobs_per_s", 1, True)
        compared("pickup latency p50", "ms", "pickup_p50_ms", 2, False)
        compared("pickup latency p99", "ms", "pickup_p99_ms", 2, False)
        compared("GET /api/ai-jobs/{id} p50", "ms", "get_p50_ms", 3, False)
        pruned = result["prune"]
        row = Row(
            f"scale: retention prune of {pruned['deleted']:,} finished jobs and their events "
            f"(the pruner, 1,000 a transaction) [{pruned['jobs_per_s_pruned']:,} jobs/s]",
            "s",
            higher_is_better=False,
        )
        row.values = {"aijobs": spread([pruned["prune_s"]], 1)}
        self.rows.append(row)
        row = Row(
            f"scale: no-op throughput, {jobs}, while the prune runs "
            f"[{pruned['drains']} drains back to back]",
            "jobs/s",
        )
        row.values = {
            "aijobs": spread([pruned["jobs_per_s"]], 1),
            "empty": spread(figures["empty"]["jobs_per_s"], 1),
        }
        self.rows.append(row)
        self.grown_tables = {
            "load_s": result["load_s"],
            "sizes": result["sizes"],
            "plans": {
                name: {k: v for k, v in plan.items() if k != "plan"}
                for name, plan in result["plans"].items()
            },
        }

    async def profile_section(self) -> None:
        jobs = throughput.jobs_for(self.scale)
        self.profile = await profiling.profile_drain(self.server_dsn, jobs, concurrency=50)
        log(f"profile: {self.profile.get('samples', 0)} samples")

    def record_not_taken(self, what: str, error: BaseException) -> None:
        """A figure that could not be taken: a row saying so, and the rest of the suite goes on."""
        reason = f"{type(error).__name__}: {error}".strip().splitlines()[0][:160]
        log(f"{what}: not taken: {reason}")
        self.rows.append(Row(what, "", not_taken=reason))
        self.raw.setdefault("not_taken", []).append({"figure": what, "reason": reason})

    async def run(self) -> None:
        if not queues.pgqueuer_available():
            self.notes.append("PgQueuer is not installed here: its columns are empty")
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("throughput", self.throughput),
            ("pickup", self.pickup),
            ("slow_model", self.slow_model),
            ("fairness", self.fairness),
            ("http", self.http),
            ("sse", self.sse),
            ("scale", self.scale_section),
            ("profile", self.profile_section),
        ]
        for name, step in steps:
            if self.wants(name):
                log(f"{name} ...")
                try:
                    await asyncio.wait_for(step(), SECTION_TIMEOUT_S)
                except Exception as exc:  # one benchmark failing must not lose the others
                    self.record_not_taken(name, exc)


def _brief(result: dict[str, Any]) -> str:
    keys = (
        "jobs_per_s",
        "p50_ms",
        "p99_ms",
        "share_of_ideal_pct",
        "worker_peak_rss_mb",
        "rss_kb_per_subscriber",
        "dispatch_ratio",
        "b_p50_s",
        "b_p99_s",
    )
    return ", ".join(f"{k}={result[k]}" for k in keys if k in result)


# -- the table ------------------------------------------------------------------------------


def _cell(row: Row, system: str) -> str:
    cell = row.values.get(system)
    if cell is None:
        return "—"
    if cell["min"] == cell["max"]:
        return f"{_num(cell['median'])}"
    return f"{_num(cell['median'])} ({_num(cell['min'])}-{_num(cell['max'])})"


def _num(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(row: Row, system: str) -> str:
    ratio = row.ratio(system)
    return "—" if ratio is None else f"{ratio:.2f}x"


def _reference(row: Row) -> str:
    """The column a row is compared with besides PgQueuer."""
    for reference in ("bare", "empty"):
        if reference in row.values:
            return reference
    return REFERENCE


def table(rows: list[Row]) -> str:
    """A Markdown table: one row per figure."""
    header = [
        "figure",
        "unit",
        "aijobs",
        "PgQueuer",
        "floor / bare aiohttp / empty tables",
        "aijobs ÷ PgQueuer",
        "aijobs ÷ floor/bare/empty",
        "target",
        "met",
    ]
    lines = [header]
    for row in rows:
        reference = _reference(row)
        if row.not_taken is not None:
            missing = f"{row.figure} [not taken: {row.not_taken}]"
            lines.append([missing, row.unit or "—", "not taken", "—", "—", "—", "—", "—", "n/a"])
            continue
        verdict = {True: "met", False: "NOT MET", None: "n/a"}[row.met] if row.target else "—"
        lines.append(
            [
                row.figure + (f" [{row.note}]" if row.note else ""),
                row.unit,
                _cell(row, "aijobs"),
                _cell(row, "pgqueuer"),
                _cell(row, reference),
                _ratio(row, "pgqueuer"),
                _ratio(row, reference),
                row.target or "—",
                verdict,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def _machine() -> dict[str, Any]:
    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "asyncpg": version("asyncpg"),
        "aiohttp": version("aiohttp"),
        "pgqueuer": version("pgqueuer"),
        "py-spy": version("py-spy"),
    }


async def run_suite(
    server_dsn: str,
    scale: str = "full",
    runs: int = 3,
    only: set[str] | None = None,
    out_dir: Path = RESULTS,
) -> dict[str, Any]:
    """Run the suite; returns (and writes under `out_dir`) the table and every raw figure."""
    suite = Suite(server_dsn, scale, runs, only or set())
    started = datetime.datetime.now(datetime.UTC)
    machine = _machine()
    if machine["load_average"][0] > 1.0:
        suite.notes.append(
            f"the machine was busy when the suite started (load average "
            f"{machine['load_average'][0]:.1f} on {machine['cpus']} CPUs): figures are noisier"
        )
    await suite.run()
    machine["load_average_after"] = os.getloadavg()
    rendered = table(suite.rows)
    result = {
        "started": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.datetime.now(datetime.UTC) - started).total_seconds()),
        "scale": scale,
        "runs": runs,
        "machine": machine,
        "table": rendered,
        "rows": [
            {
                "figure": r.figure,
                "unit": r.unit,
                "values": r.values,
                "ratio_to_pgqueuer": r.ratio("pgqueuer"),
                "ratio_to_reference": r.ratio(_reference(r)),
                "target": r.target,
                "met": r.met,
                "note": r.note,
                "not_taken": r.not_taken,
            }
            for r in suite.rows
        ],
        "notes": suite.notes,
        "profile": suite.profile,
        "grown_tables": suite.grown_tables,
        "raw": suite.raw,
    }
    result["path"] = str(_write(result, out_dir, started.strftime("%Y%m%d-%H%M%S")))
    return result


def _write(result: dict[str, Any], out_dir: Path, stamp: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1, default=str)
    path = out_dir / f"bench-{stamp}.json"
    path.write_text(text)
    (out_dir / "latest.json").write_text(text)
    return path


def render(result: dict[str, Any]) -> str:
    parts = [
        f"aijobs bench ({result['scale']}, median of {result['runs']} runs, "
        f"(min-max); {result['seconds']} s; load average before/after "
        f"{result['machine']['load_average'][0]:.1f}/"
        f"{result['machine']['load_average_after'][0]:.1f} on {result['machine']['cpus']} CPUs)",
        "",
        result["table"],
    ]
    if result["notes"]:
        parts += ["", *(f"note: {n}" for n in result["notes"])]
    if result.get("grown_tables"):
        parts += ["", _scale_summary(result["grown_tables"])]
    if result["profile"]:
        parts += ["", profiling.format_summary(result["profile"])]
    parts += ["", f"written to {result['path']}"]
    return "\n".join(parts)


def _scale_summary(summary: dict[str, Any]) -> str:
    """Sizes of the grown tables and indexes, and what the queue's scans read of ai_jobs."""
    mb = 1024 * 1024
    sizes = summary["sizes"]
    lines = [f"scale: tables after the load ({summary['load_s']:g} s to load)"]
    for t in sizes["tables"]:
        lines.append(
            f"  {t['name']}: {sizes['rows'][t['name']]:,} rows, {t['total'] / mb:,.1f} MB "
            f"(heap {t['heap'] / mb:,.1f} MB, {t['index_count']} indexes "
            f"{t['indexes'] / mb:,.1f} MB)"
        )
    for i in sizes["indexes"]:
        partial = f"  WHERE {i['predicate']}" if i["predicate"] else ""
        lines.append(f"    {i['name']}: {i['bytes'] / mb:,.1f} MB{partial}")
    lines.append("scale: EXPLAIN (ANALYZE, BUFFERS) in the grown tables (plans in the JSON)")
    for name, plan in summary["plans"].items():
        whole = "  READS THE WHOLE TABLE" if plan["seq_scan_of_ai_jobs"] else ""
        lines.append(
            f"  {name}: {plan['ms']} ms, {plan['buffers']} buffers; "
            f"{', '.join(plan['ai_jobs_scans'])}{whole}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="", help=f"comma-separated: {', '.join(SECTIONS)}")
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args(argv)
    only = {s for s in args.only.split(",") if s}
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if args.no_profile:
        only = (only or set(SECTIONS)) - {"profile"}
    configure_logging("warning", "console")
    result = asyncio.run(run_suite(admin_dsn(), args.scale, args.runs, only))
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
