"""Log lines: written once per turn of the event loop, and never left behind."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys

from service.logs import LineWriter


async def test_the_lines_of_one_turn_of_the_loop_go_out_together() -> None:
    out = io.StringIO()
    writer = LineWriter(out)
    writer.msg("first")
    writer.msg("second")
    assert out.getvalue() == ""
    await asyncio.sleep(0)
    assert out.getvalue() == "first\nsecond\n"


def test_a_line_outside_a_loop_goes_out_at_once() -> None:
    out = io.StringIO()
    LineWriter(out).msg("alone")
    assert out.getvalue() == "alone\n"


def test_a_line_left_by_a_loop_that_stopped_goes_out_with_the_next() -> None:
    out = io.StringIO()
    writer = LineWriter(out)
    loop = asyncio.new_event_loop()

    def log_then_stop() -> None:
        writer.msg("last words")
        loop.stop()  # before the turn that would have written the line

    loop.call_soon(log_then_stop)
    loop.run_forever()
    loop.close()
    assert out.getvalue() == ""
    writer.msg("next")
    assert out.getvalue() == "last words\nnext\n"


def stderr_of(*lines: str) -> str:
    """What a real process running these lines (after `import logging`) writes to stderr."""
    script = "\n".join(["import logging", *lines])
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stderr


def test_a_library_line_is_a_json_line_like_ours() -> None:
    # A real process, as a deployed worker logs: a warning of asyncpg's and an exception
    # of aiohttp's, through the standard logging module.
    stderr = stderr_of(
        "from service.logs import configure_logging, get_logger",
        "configure_logging('info', 'json')",
        "get_logger('ours').info('job_completed', duration_s=1.5)",
        "logging.getLogger('asyncpg.pool').warning('connection %s lost', 7)",
        "logging.getLogger('quiet').info('below warning: not written')",
        "try:",
        "    1 / 0",
        "except ZeroDivisionError:",
        "    logging.getLogger('aiohttp.server').exception('Error handling request')",
    )
    lines = [json.loads(line) for line in stderr.splitlines()]
    assert [(line["event"], line["level"]) for line in lines] == [
        ("job_completed", "info"),
        ("connection 7 lost", "warning"),
        ("Error handling request", "error"),
    ]
    assert lines[1]["logger"] == "asyncpg.pool"
    assert lines[2]["logger"] == "aiohttp.server"
    assert "ZeroDivisionError" in lines[2]["exception"]
    assert all(line["timestamp"].endswith("Z") for line in lines)


def test_a_traceback_on_the_console_is_plain_and_shows_no_locals() -> None:
    # A frame's locals may hold a token or a key: a traceback names the line, not the values.
    stderr = stderr_of(
        "from service.logs import configure_logging",
        "configure_logging('info', 'console')",
        "def call(token):",
        "    raise ValueError('refused')",
        "try:",
        "    call('tok-secret-123')",
        "except ValueError:",
        "    logging.getLogger('aiohttp.server').exception('Error handling request')",
    )
    assert "Error handling request" in stderr
    assert "Traceback (most recent call last):" in stderr
    assert "ValueError: refused" in stderr
    assert "tok-secret-123" not in stderr
