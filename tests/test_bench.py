"""The benchmarks in a tiny mode, so that they cannot rot. No timing is asserted."""

from __future__ import annotations

from bench.pickup_latency import measure
from tests.pg import DatabaseFactory


async def test_pickup_latency_bench_runs(databases: DatabaseFactory) -> None:
    figures = await measure(databases.admin_dsn, jobs=10, gap_ms=1)
    assert figures["jobs"] == 10
    assert figures["p50_ms"] >= 0
