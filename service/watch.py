"""Following jobs from a terminal, over the API's server-sent events.

A client of the HTTP API like any other: it speaks HTTP only, and knows the API by its
contract, not by its code.
"""

from __future__ import annotations

import asyncio
import codecs
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import aiohttp
import orjson

FINISHED = ("completed", "failed")
DISPATCH_PATHS = {
    "ai-match": "/api/gap-analysis/ai-match/{id}",
    "ai-coverage": "/api/requirements/{id}/ai-coverage",
    "ai-map-controls": "/api/documents/{id}/ai-map-controls",
}
# Until the server says otherwise with a `retry:` line.
DEFAULT_RETRY_MS = 2000

JobJson = dict[str, Any]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class WatchError(Exception):
    """The job cannot be followed: it does not exist, or the API cannot be reached."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    data: str
    id: str | None


class SseParser:
    """Server-sent events from bytes as they arrive, by the parsing rules of the HTML spec."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._event = ""
        self._data: list[str] = []
        self.last_id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events completed by `chunk`."""
        text = self._pending + self._decoder.decode(chunk)
        # A CR at the end may be the first half of a CRLF: keep it until the next chunk.
        held = ""
        if text.endswith("\r"):
            text, held = text[:-1], "\r"
        *lines, rest = _LINE_BREAK.split(text)
        self._pending = rest + held
        events: list[SseEvent] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(
                        SseEvent(self._event or "message", "\n".join(self._data), self.last_id)
                    )
                self._event, self._data = "", []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                self._event = value
            elif name == "data":
                self._data.append(value)
            elif name == "id" and "\0" not in value:
                self.last_id = value
            elif name == "retry" and value.isascii() and value.isdigit():
                self.retry_ms = int(value)
        return events


def job_url(base_url: str, job_id: str) -> str:
    return f"{base_url.rstrip('/')}/api/ai-jobs/{job_id}"


async def _error_of(response: aiohttp.ClientResponse) -> str:
    text = await response.text()
    try:
        message = orjson.loads(text)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = text.strip()[:200] or response.reason or "no message"
    if response.status == 401:
        message = message.rstrip(".") + (
            ". Give the token with --token TOKEN or in AIJOBS_TOKEN (make demo prints one: "
            "export TOKEN=..., then AIJOBS_TOKEN=$TOKEN)"
        )
    return f"{response.status}: {message}"


async def fetch_job(session: aiohttp.ClientSession, base_url: str, job_id: str) -> JobJson:
    async with session.get(job_url(base_url, job_id)) as response:
        if response.status != 200:
            raise WatchError(await _error_of(response))
        job: JobJson = await response.json()
        return job


async def follow_job(
    session: aiohttp.ClientSession,
    base_url: str,
    job_id: str,
    on_job: Callable[[JobJson], None],
    *,
    on_delta: Callable[[JobJson], None] | None = None,
    give_up_after_s: float = 60.0,
    idle_timeout_s: float = 60.0,
) -> JobJson:
    """Follow a job until it is completed or failed; returns the final job.

    `on_job` gets each state the stream carries, in order; `on_delta` each `delta` event
    (text the model wrote since the last one). A stream that drops or ends
    before the job finished is resumed after the last event received (Last-Event-ID), after
    the pause the server asked for. Raises WatchError when the API says the job cannot be
    followed (unknown job, malformed id), or has been unreachable for `give_up_after_s`.
    """
    url = job_url(base_url, job_id) + "/events"
    timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=idle_timeout_s)
    last_id: str | None = None
    retry_ms = DEFAULT_RETRY_MS
    failing_since: float | None = None
    while True:
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        problem = "the stream ended before the job finished"
        try:
            async with session.get(url, headers=headers, timeout=timeout) as response:
                if response.status == 204:
                    # Nothing after our last event: the job finished and we had it all.
                    return await fetch_job(session, base_url, job_id)
                if 400 <= response.status < 500:
                    raise WatchError(await _error_of(response))
                if response.status != 200:
                    problem = await _error_of(response)
                else:
                    failing_since = None
                    parser = SseParser()
                    async for chunk in response.content.iter_any():
                        events = parser.feed(chunk)
                        retry_ms = parser.retry_ms or retry_ms
                        for event in events:
                            last_id = event.id if event.id is not None else last_id
                            if event.event == "delta" and on_delta is not None:
                                on_delta(orjson.loads(event.data))
                            if event.event != "job":
                                continue
                            job: JobJson = orjson.loads(event.data)
                            on_job(job)
                            if job["status"] in FINISHED:
                                return job
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            problem = str(exc) or type(exc).__name__
        now = time.monotonic()
        failing_since = failing_since if failing_since is not None else now
        if now - failing_since > give_up_after_s:
            raise WatchError(f"cannot follow job {job_id} at {base_url}: {problem}")
        await asyncio.sleep(retry_ms / 1000)


def progress_line(job: JobJson) -> str:
    """`processing [##########..........] 2/4 Analyzing batch 2 of 4...`"""
    progress = job.get("progress")
    bar = ""
    if progress and progress.get("total"):
        width = 20
        current = progress.get("current") or 0
        filled = max(0, min(width, round(width * current / progress["total"])))
        bar = f"[{'#' * filled}{'.' * (width - filled)}] {current}/{progress['total']} "
    message = job.get("errorMessage") if job["status"] == "failed" else job.get("progressMessage")
    return f"{job['status']:<10} {bar}{message or ''}"


def _stream_label(delta: JobJson) -> str:
    """`rationale`, `rationale (batch 2, control 17)`: which text a delta adds to."""
    where = [str(delta["part"]).replace("-", " ")] if delta.get("part") else []
    if delta.get("controlId") is not None:
        where.append(f"control {delta['controlId']}")
    return f"{delta['field']} ({', '.join(where)})" if where else str(delta["field"])


class ProgressDisplay:
    """Draws a job's progress, and under it the text the model is writing.

    On a terminal: the bar is one line redrawn in place, and the line under it shows the end
    of the text being written. Else a line per change of the bar, and the text as it
    arrives, each piece of the answer on lines of its own, indented.
    """

    def __init__(self, out: TextIO, *, live: bool | None = None) -> None:
        self._out = out
        self._live = out.isatty() if live is None else live
        self._last: str | None = None
        # The text being written: which stream, and its text so far.
        self._stream: tuple[object, ...] | None = None
        self._text = ""
        # Not live: the text printed has left the cursor mid-line.
        self._mid_line = False

    def show(self, job: JobJson) -> None:
        line = progress_line(job)
        if line == self._last:
            return
        self._last = line
        if self._live:
            self._draw()
        else:
            if self._mid_line:
                self._out.write("\n")
                self._mid_line = False
                self._stream = None
            self._out.write(line + "\n")
        self._out.flush()

    def text(self, delta: JobJson) -> None:
        """Text the model wrote (a `delta` event). At offset 0 the text starts afresh; with no
        text, the answer is being written again, and its next delta begins it."""
        stream = (delta.get("attempt"), delta.get("part"), delta.get("controlId"), delta["field"])
        if not delta["text"]:
            if self._live and stream == self._stream:
                self._text = ""
                self._draw()
                self._out.flush()
            return
        new = stream != self._stream or delta.get("offset") == 0
        self._stream = stream
        self._text = (("" if new else self._text) + str(delta["text"]))[-2000:]
        if self._live:
            self._draw()
        else:
            if new:
                # Indented: a line of text is never read as a line of progress.
                self._out.write(("\n" if self._mid_line else "") + f"  {_stream_label(delta)}: ")
            self._out.write(str(delta["text"]).replace("\n", "\n    "))
            self._mid_line = True
        self._out.flush()

    def _draw(self) -> None:
        # A line wider than the terminal would wrap, and \r would redraw only its tail.
        width = max(shutil.get_terminal_size().columns - 1, 20)
        below = " ".join(self._text.split())[-width:] if self._stream is not None else ""
        if self._mid_line:
            self._out.write("\x1b[1A")  # back to the bar's line
        self._out.write(f"\r\x1b[K{(self._last or '')[:width]}")
        if below:
            self._out.write(f"\n\x1b[K{below}")
        self._mid_line = bool(below)

    def close(self) -> None:
        if self._mid_line or (self._live and self._last is not None):
            self._out.write("\n")
            self._out.flush()


async def _follow_and_report(
    session: aiohttp.ClientSession, base_url: str, job_id: str, out: TextIO, err: TextIO
) -> int:
    display = ProgressDisplay(out)
    try:
        job = await follow_job(session, base_url, job_id, display.show, on_delta=display.text)
    except WatchError as exc:
        display.close()
        print(f"aijobs: {exc}", file=err)
        return 2
    display.close()
    if job["status"] == "completed":
        return 0
    print(f"aijobs: job {job_id} failed: {job.get('errorMessage')}", file=err)
    return 1


def _session(token: str | None) -> aiohttp.ClientSession:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return aiohttp.ClientSession(headers=headers)


async def watch(
    base_url: str,
    job_id: str,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    *,
    token: str | None = None,
) -> int:
    """`aijobs watch`: 0 when the job completes, 1 when it fails, 2 when it cannot be followed."""
    async with _session(token) as session:
        return await _follow_and_report(session, base_url, job_id, out, err)


async def dispatch(
    base_url: str,
    job_type: str,
    entity_id: int,
    *,
    then_watch: bool,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    token: str | None = None,
) -> int:
    """`aijobs dispatch`: prints the job id; with `then_watch`, exits as `watch` does."""
    url = base_url.rstrip("/") + DISPATCH_PATHS[job_type].format(id=entity_id)
    async with _session(token) as session:
        try:
            async with session.post(url) as response:
                if response.status >= 300:
                    print(f"aijobs: {await _error_of(response)}", file=err)
                    return 2
                body = await response.json()
        except (aiohttp.ClientError, OSError) as exc:
            print(f"aijobs: cannot reach {base_url}: {exc}", file=err)
            return 2
        job_id = str(body["jobId"])
        print(job_id, file=out, flush=True)
        if not then_watch:
            return 0
        return await _follow_and_report(session, base_url, job_id, out, err)
