"""The benchmarks in a tiny mode, so that they cannot rot. No timing is asserted.

PgQueuer is installed in the bench environment only (`make bench`); here its variants are
skipped when it cannot be imported.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import (
    fairness,
    http_load,
    pickup_latency,
    queues,
    run,
    scale,
    slow_model,
    throughput,
)
from bench.profile import summarise
from tests.pg import DatabaseFactory


def _skip_unavailable(system: str) -> None:
    if not queues.available(system):
        pytest.skip(f"{system} is not installed here (it is in the bench environment)")


@pytest.mark.parametrize("system", queues.SYSTEMS)
async def test_throughput_bench_runs(databases: DatabaseFactory, system: str) -> None:
    _skip_unavailable(system)
    figures = await throughput.measure(databases.admin_dsn, system, jobs=100, concurrency=10)
    assert figures["jobs"] == 100
    assert figures["jobs_per_s"] > 0
    assert figures["commits_per_job"] >= 0


async def test_throughput_bench_runs_aijobs_with_synchronous_commits(
    databases: DatabaseFactory,
) -> None:
    figures = await throughput.measure(
        databases.admin_dsn, "aijobs", jobs=100, concurrency=10, synchronous_commit="on"
    )
    assert figures["synchronous_commit"] == "on"
    assert figures["jobs_per_s"] > 0


@pytest.mark.parametrize("system", queues.SYSTEMS)
async def test_pickup_latency_bench_runs(databases: DatabaseFactory, system: str) -> None:
    _skip_unavailable(system)
    figures = await pickup_latency.measure(databases.admin_dsn, jobs=10, gap_ms=1, system=system)
    assert figures["jobs"] == 10
    # Across processes a start can be logged a hair before the dispatcher resumes: no sign.
    assert math.isfinite(figures["p50_ms"])
    assert figures["p99_ms"] >= figures["p50_ms"]


async def test_fairness_bench_runs(databases: DatabaseFactory) -> None:
    figures = await fairness.measure(
        databases.admin_dsn, True, jobs_a=12, jobs_b=2, delay_s=0.05, concurrency=3
    )
    assert figures["failed"] == 0
    assert figures["b_p99_s"] >= figures["b_p50_s"] >= 0


async def test_slow_model_bench_runs(databases: DatabaseFactory) -> None:
    for deltas in (False, True):
        figures = await slow_model.measure(
            databases.admin_dsn,
            jobs=20,
            delay_s=0.3,
            concurrency=10,
            pool_max=4,
            deltas=deltas,
            followers=5,
        )
        assert (figures["completed"], figures["failed"]) == (20, 0)
        assert figures["worker_peak_rss_mb"] > 0
        assert figures["share_of_ideal_pct"] > 0
        if deltas:
            assert figures["follower_deltas"] > 0
            assert figures["token_to_sse_samples"] > 0
            assert figures["token_to_sse_p99_ms"] >= figures["token_to_sse_p50_ms"] > 0
            assert figures["text_notifications_per_s"] >= figures["text_sends_per_s"] > 0
        else:
            assert figures["follower_deltas"] == figures["token_to_sse_samples"] == 0
            assert figures["text_notifications_per_s"] == figures["text_sends_per_s"] == 0


async def test_slow_model_bench_runs_under_a_supervisor(databases: DatabaseFactory) -> None:
    figures = await slow_model.measure(
        databases.admin_dsn, jobs=20, delay_s=0.05, concurrency=10, pool_max=4, processes=2
    )
    assert (figures["completed"], figures["failed"]) == (20, 0)
    assert figures["processes"] == 2
    assert figures["worker_cpu_s"] > 0


async def test_http_bench_runs(databases: DatabaseFactory) -> None:
    figures = await http_load.measure(
        databases.admin_dsn, connections=2, duration_s=0.3, warmup_s=0.1, mappings=200, users=5
    )
    assert set(figures["dispatch_aijobs"]["statuses"]) == {"202"}
    assert set(figures["poll_aijobs"]["statuses"]) == {"200"}
    assert set(figures["poll_conditional_aijobs"]["statuses"]) == {"304"}
    assert figures["dispatch_bare"]["rps"] > 0
    assert figures["dispatch_jobs_created"] > 0


async def test_runner_writes_one_table_and_json(databases: DatabaseFactory, tmp_path: Path) -> None:
    result = await run.run_suite(
        databases.admin_dsn, "tiny", runs=1, only={"pickup"}, out_dir=tmp_path
    )
    assert "pickup latency" in result["table"]
    assert "< 10 ms" in result["table"]
    written = json.loads((tmp_path / "latest.json").read_text())
    assert written["rows"][0]["values"]["aijobs"]["runs"]
    assert "written to" in run.render(result)


async def test_scale_bench_runs(databases: DatabaseFactory, tmp_path: Path) -> None:
    result = await run.run_suite(
        databases.admin_dsn, "tiny", runs=1, only={"scale"}, out_dir=tmp_path
    )
    rows = [r for r in result["rows"] if r["figure"].startswith("scale:")]
    assert len(rows) == 6 and not any(r["not_taken"] for r in result["rows"])
    compared = [r for r in rows if r["target"]]
    assert len(compared) == 4 and all(r["ratio_to_reference"] > 0 for r in compared)
    raw = result["raw"]["scale"]
    assert raw["sizes"]["rows"]["ai_jobs"] == scale.TINY.finished + scale.TINY.pending
    # Three events per finished job, one per scheduled one.
    assert raw["sizes"]["rows"]["ai_job_events"] == 3 * scale.TINY.finished + scale.TINY.pending
    # The prune deleted every loaded finished job and nothing the drains had just finished.
    assert raw["prune"]["deleted"] == scale.TINY.finished
    after = raw["sizes_after_prune"]["rows"]["ai_jobs"]
    assert after > scale.TINY.pending
    plans = result["grown_tables"]["plans"]
    assert "ai_jobs_pending_owner_idx" in " ".join(
        plans["claim (fair share, the default)"]["ai_jobs_scans"]
    )
    assert "scale: EXPLAIN (ANALYZE, BUFFERS)" in run.render(result)


async def test_a_figure_that_cannot_be_taken_is_reported_and_the_rest_still_are(
    databases: DatabaseFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> dict[str, object]:
        raise TimeoutError("the worker did not start within 60 s")

    monkeypatch.setattr(pickup_latency, "measure", broken)
    result = await run.run_suite(
        databases.admin_dsn, "tiny", runs=1, only={"pickup", "sse"}, out_dir=tmp_path
    )
    assert "not taken: TimeoutError: the worker did not start within 60 s" in result["table"]
    # The section after the broken one was still taken, and its figures are in the table.
    assert "SSE, 20 subscribers: progress commit to delivery, p99" in result["table"]
    written = json.loads((tmp_path / "latest.json").read_text())
    missing = [r for r in written["rows"] if r["not_taken"]]
    assert [r["figure"] for r in missing] == ["pickup"]
    taken = [r for r in written["rows"] if not r["not_taken"]]
    assert taken and all(r["values"]["aijobs"]["runs"] for r in taken)
    assert "not taken" in run.render(result)


def test_table_shows_ratios_and_verdicts() -> None:
    row = run.Row("no-op throughput", "jobs/s", target="≥ 1.5x PgQueuer")
    row.values = {
        "aijobs": {"median": 300.0, "min": 250.0, "max": 310.0, "runs": [250.0, 300.0, 310.0]},
        "pgqueuer": {"median": 100.0, "min": 90.0, "max": 120.0, "runs": [90.0, 100.0, 120.0]},
        "floor": {"median": 600.0, "min": 600.0, "max": 600.0, "runs": [600.0]},
    }
    row.met = True
    rendered = run.table([row])
    assert "300 (250-310)" in rendered
    assert "3.00x" in rendered and "0.50x" in rendered
    assert "| met" in rendered


def test_profile_summary_ranks_functions() -> None:
    collapsed = "\n".join(
        [
            "<module> (w.py:1);run (a.py:2);complete (service/jobs/store.py:9) 30",
            "<module> (w.py:1);run (a.py:2);claim (service/jobs/store.py:5) 10",
        ]
    )
    summary = summarise(collapsed)
    assert summary["samples"] == 40
    assert summary["self"][0] == {"function": "complete (service/jobs/store.py)", "pct": 75.0}
