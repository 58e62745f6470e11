"""Structured logging: one event per line, JSON when not on a terminal."""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog

# The job an actor runs, for every line logged while it does (its processor's too): one
# variable set once per job, merged into a line only when a line is written.
_JOB: contextvars.ContextVar[tuple[str, str, int] | None] = contextvars.ContextVar(
    "aijobs_job", default=None
)


def bind_job(job_id: str, job_type: str, attempt: int) -> None:
    """Name the job in every line this task (and the tasks it starts) logs from now on."""
    _JOB.set((job_id, job_type, attempt))


def _merge_job(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    job = _JOB.get()
    if job is not None:
        event.setdefault("job_id", job[0])
        event.setdefault("job_type", job[1])
        event.setdefault("attempt", job[2])
    return event


class LineWriter:
    """Writes log lines to a stream, the lines of one turn of the event loop in one write.

    A busy worker logs thousands of lines a second; a write and a flush each (two system
    calls) cost more than the rest of the line. Inside a running loop a line is buffered and
    the buffer written at the loop's next turn; outside one (and at exit) it is written at
    once.
    """

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self._lines: list[str] = []
        # The loop a flush is scheduled on; a loop that closed before running it leaves its
        # lines to the next line logged, on another loop or none.
        self._flush_on: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        atexit.register(self.flush)

    def msg(self, message: str) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._lines.append(message)
            if loop is not None and self._flush_on is loop:
                return  # written with the others at the loop's next turn
            if loop is not None:
                self._flush_on = loop
        if loop is None:
            self.flush()
        else:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
            self._flush_on = None
        if lines:
            self._file.write("\n".join(lines) + "\n")
            self._file.flush()

    log = debug = info = warn = warning = msg
    err = error = critical = exception = fatal = failure = msg


class LineWriterFactory:
    def __init__(self, file: TextIO) -> None:
        self.writer = LineWriter(file)

    def __call__(self, *args: Any) -> LineWriter:
        return self.writer


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Set up structlog for the whole process. Safe to call more than once."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if as_json
        # Plain tracebacks: rich's, with every frame's locals, take long enough to hold up
        # the event loop (an aiohttp server logging a burst of dropped connections), and
        # would write the locals (tokens, keys) to the log.
        else structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    )
    enrich: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _merge_job,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    exceptions = (
        structlog.processors.format_exc_info
        if as_json
        else structlog.processors.StackInfoRenderer()
    )
    factory = LineWriterFactory(sys.stderr)
    structlog.configure(
        processors=[*enrich, exceptions, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    # Libraries that use the standard logging module (asyncpg, aiohttp) write the same lines:
    # JSON with event, level, logger and timestamp, through the same writer.
    handler = _StdlibLines(factory.writer)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # Not the job: a library's line comes from its own tasks (a pool's reconnects),
            # which may have been started while a job ran, but are not that job's.
            foreign_pre_chain=[
                *(p for p in enrich if p is not _merge_job),
                structlog.stdlib.add_logger_name,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                exceptions,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))


class _StdlibLines(logging.Handler):
    """A standard-library record, formatted as a structlog line, to the line writer."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._writer.msg(self.format(record))
        except Exception:
            self.handleError(record)


class _Logger:
    """structlog's lazy logger, assembled once per configuration rather than once per call.

    structlog's own proxy builds a bound logger for every call when loggers are not cached
    (and they are not: a later `configure`, as `structlog.testing.capture_logs` makes, must
    take effect); that costs more than a filtered-out call itself. This one keeps the logger
    it built, and builds another when the configuration is a different one.
    """

    __slots__ = ("_bound", "_built_for", "_proxy")

    def __init__(self, name: str) -> None:
        self._proxy: Any = structlog.get_logger(name)
        self._bound: Any = None
        self._built_for: tuple[object, ...] = ()

    def _current(self) -> Any:
        config = _CONFIG
        if config is None:
            return self._proxy.bind()
        key = (
            config.default_processors,
            config.default_wrapper_class,
            config.logger_factory,
            config.default_context_class,
        )
        built_for = self._built_for
        if (
            self._bound is None
            or built_for[0] is not key[0]
            or built_for[1] is not key[1]
            or built_for[2] is not key[2]
            or built_for[3] is not key[3]
        ):
            self._bound = self._proxy.bind()
            self._built_for = key
        return self._bound

    def bind(self, **values: Any) -> Any:
        return self._current().bind(**values)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._current(), name)


# structlog's configuration object, read to tell whether it changed; None if a later
# structlog moves it (loggers are then assembled per call, as structlog does).
_CONFIG: Any = getattr(getattr(structlog, "_config", None), "_CONFIG", None)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = _Logger(name)
    return logger
