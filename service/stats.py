"""`aijobs stats` and `aijobs jobs`: the operator's views, printed in the terminal."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import asyncpg

from service.db.queries import Queries

Q = Queries("service", "stats.sql")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, timedelta):
        seconds = int(value.total_seconds())
        if seconds >= 3600:
            return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 60:
            return f"{seconds // 60}m{seconds % 60:02d}s"
        return f"{value.total_seconds():.1f}s"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def table(rows: Sequence[asyncpg.Record], columns: Sequence[str] | None = None) -> str:
    """Rows as an aligned text table."""
    if not rows:
        return "(none)"
    names = list(columns or rows[0].keys())
    cells = [[_cell(row[name]) for name in names] for row in rows]
    widths = [max(len(name), *(len(r[i]) for r in cells)) for i, name in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


async def stats_text(conn: asyncpg.Connection, days: int = 7) -> str:
    parts = ["Jobs", table(await conn.fetch(Q.overview)), "", "Workers"]
    parts.append(table(await conn.fetch(Q.workers)))
    if await conn.fetchval(Q.usage_view_exists):
        parts += ["", "Claude usage by day", table(await conn.fetch(Q.usage_daily, days * 3))]
    return "\n".join(parts)


async def jobs_text(
    conn: asyncpg.Connection, status: str | None, job_type: str | None, limit: int
) -> str:
    rows = await conn.fetch(Q.jobs, status, job_type, limit)
    return table(rows)
