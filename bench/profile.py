"""Where a worker's time goes: py-spy on an aijobs no-op drain, summarised.

    python -m bench.profile [--jobs 20000] [--concurrency 50] [--top 15]
    python -m bench.profile --target api      # the API under bench/http_load.py's load

Runs bench/throughput.py's drain with the worker under `py-spy record` twice: once for a
flame graph (bench/results/profile.svg), once for the collapsed stacks
(bench/results/profile.txt), which this module sums up per function: self time (the
function itself on CPU) and total time (it or anything it called), as shares of the samples.
py-spy samples only threads that are on CPU (idle waits are not counted), so the shares say
where the worker's CPU goes. py-spy ships in the bench environment (`make bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import shutil
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import http_load, throughput
from bench.common import RESULTS, admin_dsn

# "func (path/to/file.py:123)" in py-spy's collapsed output.
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_SITE = re.compile(r".*/(?:site-packages|lib/python3\.\d+)/")
# Frames on every stack (the interpreter, the event loop turning): left out of the rankings.
_PLUMBING = re.compile(
    r"^(<module>|_run_code|_run_module_as_main|main|run) |"
    r"\(asyncio/(base_events|runners|events)\.py\)$|\(bench/worker_proc\.py\)$"
)


def py_spy() -> str | None:
    """The py-spy beside this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _short(frame: str) -> str:
    """`func (file)` without the line, the file relative to the project or site-packages."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"]
    path = _SITE.sub("", path)
    path = path.replace(str(Path(__file__).resolve().parent.parent) + "/", "")
    return f"{match['func']} ({path})"


def _stacks(collapsed: str) -> Iterator[tuple[list[str], int]]:
    """The frames (outermost first) and sample count of each line of py-spy's raw output."""
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            yield stack.split(";"), int(count_text)


def summarise(collapsed: str, top: int = 15) -> dict[str, Any]:
    """Self and total shares per function from py-spy's `--format raw` output."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for stack, count in _stacks(collapsed):
        samples += count
        frames = [_short(f) for f in stack if f]
        if not frames:
            continue
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
    if samples == 0:
        return {"samples": 0, "self": [], "total": []}

    def shares(counter: Counter[str]) -> list[dict[str, Any]]:
        ranked = ((name, n) for name, n in counter.most_common() if not _PLUMBING.search(name))
        return [
            {"function": name, "pct": round(100 * n / samples, 1)}
            for name, n in itertools.islice(ranked, top)
        ]

    return {"samples": samples, "self": shares(own), "total": shares(total)}


def summarise_by_area(collapsed: str) -> list[dict[str, Any]]:
    """Shares of the samples by what the innermost recognisable frame belongs to."""
    areas = {
        "asyncpg (driver, protocol)": ("asyncpg/",),
        "structlog / logging": ("structlog/", "logging/"),
        "prometheus_client": ("prometheus_client/",),
        "asyncio event loop": ("asyncio/",),
        "aijobs jobs/": ("service/jobs/",),
        "aijobs db/": ("service/db/",),
        "uuid / datetime / dataclasses": ("uuid.py", "dataclasses.py", "datetime.py"),
    }
    counts: Counter[str] = Counter()
    samples = 0
    for stack, count in _stacks(collapsed):
        samples += count
        found = "other"
        for frame in reversed(stack):
            hit = next(
                (area for area, marks in areas.items() if any(m in frame for m in marks)), None
            )
            if hit is not None:
                found = hit
                break
        counts[found] += count
    return [
        {"area": area, "pct": round(100 * n / max(samples, 1), 1)}
        for area, n in counts.most_common()
    ]


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


async def profile_drain(
    server_dsn: str, jobs: int, concurrency: int, out_dir: Path = RESULTS, top: int = 15
) -> dict[str, Any]:
    """Profile one aijobs drain; writes profile.svg and profile.txt under `out_dir`."""
    spy = py_spy()
    if spy is None:
        return {"skipped": "py-spy is not installed (it comes with `make bench`)"}
    _make_dir(out_dir)
    svg = out_dir / "profile.svg"
    raw = out_dir / "profile.txt"
    base = [spy, "record", "--rate", "200"]
    await throughput.measure(
        server_dsn, "aijobs", jobs, concurrency, profile=[*base, "-o", str(svg)]
    )
    run = await throughput.measure(
        server_dsn, "aijobs", jobs, concurrency, profile=[*base, "--format", "raw", "-o", str(raw)]
    )
    collapsed = raw.read_text()
    return {
        "jobs": jobs,
        "concurrency": concurrency,
        "jobs_per_s_under_profiler": run["jobs_per_s"],
        "svg": str(svg.relative_to(out_dir.parent.parent)) if out_dir == RESULTS else str(svg),
        **summarise(collapsed, top),
        "areas": summarise_by_area(collapsed),
    }


async def profile_api(server_dsn: str, out_dir: Path = RESULTS, top: int = 15) -> dict[str, Any]:
    """Profile `aijobs api` under bench/http_load.py's load (dispatch, poll, conditional
    poll); writes api-profile.txt under `out_dir`."""
    spy = py_spy()
    if spy is None:
        return {"skipped": "py-spy is not installed (it comes with `make bench`)"}
    _make_dir(out_dir)
    raw = out_dir / "api-profile.txt"
    run = await http_load.measure(
        server_dsn, profile=[spy, "record", "--rate", "200", "--format", "raw", "-o", str(raw)]
    )
    collapsed = raw.read_text()
    return {
        "what": f"aijobs api under HTTP load, {run['connections']} connections",
        "rps_under_profiler": {
            name: run[f"{name}_aijobs"]["rps"] for name in ("dispatch", "poll", "poll_conditional")
        },
        "raw": str(raw),
        **summarise(collapsed, top),
        "areas": summarise_by_area(collapsed),
    }


def format_summary(summary: dict[str, Any]) -> str:
    if "skipped" in summary:
        return f"profile skipped: {summary['skipped']}"
    what = summary.get("what") or (
        f"aijobs no-op drain, {summary['jobs']} jobs at concurrency {summary['concurrency']}"
    )
    where = f"flame graph: {summary['svg']}" if "svg" in summary else summary.get("raw", "")
    lines = [
        f"py-spy: {what}, {summary['samples']} samples on CPU ({where})",
        "",
        "self time (the function itself):",
        *(f"  {row['pct']:5.1f}%  {row['function']}" for row in summary["self"]),
        "",
        "total time (the function and what it calls):",
        *(f"  {row['pct']:5.1f}%  {row['function']}" for row in summary["total"]),
        "",
        "by area (innermost frame):",
        *(f"  {row['pct']:5.1f}%  {row['area']}" for row in summary["areas"]),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--target", choices=("worker", "api"), default="worker", help="what to profile"
    )
    args = parser.parse_args()
    if args.target == "api":
        summary = asyncio.run(profile_api(admin_dsn(), top=args.top))
    else:
        summary = asyncio.run(profile_drain(admin_dsn(), args.jobs, args.concurrency, top=args.top))
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))


if __name__ == "__main__":
    main()
