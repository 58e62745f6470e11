"""bench/rate_limit.py in a tiny mode, so that it cannot rot. No timing is asserted."""

from __future__ import annotations

from bench.rate_limit import measure
from tests.pg import DatabaseFactory


async def test_rate_limit_bench_runs(databases: DatabaseFactory) -> None:
    shared, alone = await measure(databases.admin_dsn, jobs=6, rpm=600, workers=2, concurrency=3)
    assert (shared["shared_limit"], alone["shared_limit"]) == (True, False)
    assert shared["completed"] == alone["completed"] == 6
    assert shared["responses_429"] == 0
