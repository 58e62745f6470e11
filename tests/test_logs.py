"""Log lines: written once per turn of the event loop, and never left behind."""

from __future__ import annotations

import asyncio
import io

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
