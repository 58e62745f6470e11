"""The `aijobs` command."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from service import watch
from service.config import JOB_TYPES, MAX_PORT, ConfigError, Settings
from service.logs import configure_logging
from service.supervisor import follow_supervisor

T = TypeVar("T")


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed: its sockets and callbacks cost the worker and the API
    less CPU per round trip than asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _run(main: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
        return runner.run(main)


_DEFAULT = " (default: %(default)s)"


def _int_in(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from `minimum` (to `maximum`), else a usage error."""

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {raw!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    return parse


_ENTITY_OF = {
    "ai-match": "a gap-analysis mapping's id",
    "ai-coverage": "a requirement's id",
    "ai-map-controls": "a document's id",
}


def _parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aijobs", description="Slow AI work behind a web application."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply the migrations in sql/ that are not applied yet")

    def http_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default=settings.host, help="address to listen on" + _DEFAULT)
        p.add_argument(
            "--port",
            type=_int_in(0, MAX_PORT),
            default=settings.port,
            help="port to listen on" + _DEFAULT,
        )
        p.add_argument(
            "--insecure-dev-auth",
            action="store_true",
            help="without AIJOBS_JWT_SECRET, accept requests with no token as a development "
            "user who sees every job; never in production",
        )

    def worker_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--concurrency",
            type=_int_in(1),
            default=settings.concurrency,
            help="jobs run at once" + _DEFAULT,
        )

    api = sub.add_parser("api", help="run the HTTP API")
    http_options(api)
    worker = sub.add_parser("worker", help="run a worker")
    worker_options(worker)
    worker.add_argument(
        "--processes",
        type=_int_in(1),
        default=1,
        help="worker processes, each with --concurrency slots, under one supervisor that "
        "restarts a process that dies" + _DEFAULT,
    )
    serve = sub.add_parser("serve", help="run the API and a worker in one process")
    http_options(serve)
    worker_options(serve)
    demo = sub.add_parser("demo", help="load sample data, run one job of each type, and serve")
    http_options(demo)
    demo.add_argument(
        "--exit", action="store_true", help="exit once the demo jobs finish instead of serving"
    )

    # 0.0.0.0 and :: are where a server listens, not where a client connects.
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    default_url = f"http://{host}:{settings.port}"

    token_help = "bearer token for the API (default: $AIJOBS_TOKEN; make demo prints one)"
    follow = sub.add_parser(
        "watch", help="follow a job's progress until it finishes (exit 0 completed, 1 failed)"
    )
    follow.add_argument("job_id", metavar="JOB_ID")
    follow.add_argument("--url", default=default_url, help="the API" + _DEFAULT)
    follow.add_argument("--token", default=os.environ.get("AIJOBS_TOKEN"), help=token_help)
    types = "\n".join(f"  {t:<16} ENTITY_ID is {e}" for t, e in _ENTITY_OF.items())
    dispatch = sub.add_parser(
        "dispatch",
        help="start an analysis through the API, print its job id",
        description=f"Start an analysis through the API and print its job id.\n\nTYPE:\n{types}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dispatch.add_argument(
        "job_type",
        metavar="TYPE",
        choices=sorted(watch.DISPATCH_PATHS),
        help="one of " + ", ".join(_ENTITY_OF),
    )
    dispatch.add_argument(
        "entity_id", metavar="ENTITY_ID", type=int, help="the id of the entity to analyse"
    )
    dispatch.add_argument("--url", default=default_url, help="the API" + _DEFAULT)
    dispatch.add_argument("--token", default=os.environ.get("AIJOBS_TOKEN"), help=token_help)
    dispatch.add_argument(
        "--watch", action="store_true", help="then follow the job as `aijobs watch` does"
    )
    stats = sub.add_parser("stats", help="the queue overview, live workers, Claude usage")
    stats.add_argument(
        "--days", type=_int_in(1), default=7, help="days of usage to show" + _DEFAULT
    )
    jobs = sub.add_parser("jobs", help="list recent jobs")
    jobs.add_argument(
        "--status", choices=("pending", "processing", "completed", "failed"), help="only these"
    )
    jobs.add_argument("--type", dest="job_type", choices=JOB_TYPES, help="only this job type")
    jobs.add_argument("--limit", type=_int_in(1), default=20, help="how many" + _DEFAULT)
    sub.add_parser(
        "psql",
        help="psql on the database in use (DATABASE_URL, or the embedded server); "
        "further arguments go to psql",
        description="psql on the database aijobs uses: DATABASE_URL, or the embedded server "
        "under AIJOBS_DATA_DIR (joined if a demo or server runs it, else started until psql "
        "exits). Further arguments go to psql, e.g. aijobs psql -c 'TABLE ai_jobs_overview'.",
    )
    return parser


async def _psql(settings: Settings, extra: list[str]) -> int:
    from service import runtime
    from service.db.embedded import psql_executable

    async with runtime.database(settings) as dsn:
        try:
            proc = await asyncio.create_subprocess_exec(psql_executable(), dsn, *extra)
        except FileNotFoundError as exc:
            print(f"aijobs: psql not found: {exc}", file=sys.stderr)
            return 2
        return await proc.wait()


class _NotMigrated(Exception):
    """The database lacks migrations the reports read from."""


async def _report(settings: Settings, args: argparse.Namespace) -> str:
    from service import runtime, stats
    from service.db.migrations import load_migrations, pending_migrations

    async with runtime.database(settings) as dsn:
        conn = await runtime.connect_at_start(dsn, "aijobs-cli", pooled=settings.pooled)
        try:
            pending = await pending_migrations(conn)
            if pending:
                lacks = (
                    "has no aijobs tables yet"
                    if len(pending) == len(load_migrations())
                    else "lacks migrations " + ", ".join(map(str, pending))
                )
                raise _NotMigrated(
                    f"the database {lacks}: run `aijobs migrate` first "
                    "(`api`, `worker`, `serve` and `demo` apply them at start)"
                )
            if args.command == "stats":
                return await stats.stats_text(conn, args.days)
            return await stats.jobs_text(conn, args.status, args.job_type, args.limit)
        finally:
            await conn.close()


async def _supervise(settings: Settings, processes: int, concurrency: int) -> int:
    """`aijobs worker --processes N`: migrate once, then run and watch N workers."""
    from service import runtime
    from service.supervisor import SupervisorOptions, supervise

    async with runtime.database(settings) as dsn:
        await runtime.run_migrations(settings, dsn)
        return await supervise(
            dsn, concurrency, SupervisorOptions(processes), settings.worker_http_port
        )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"aijobs: {exc}", file=sys.stderr)
        return 2
    parser = _parser(settings)
    args, extra = parser.parse_known_args(argv)
    if args.command == "psql":
        configure_logging("warning", settings.log_format)
        return _run(_psql(settings, extra))
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in ("watch", "dispatch"):
        try:
            if args.command == "watch":
                return _run(watch.watch(args.url, args.job_id, token=args.token))
            return _run(
                watch.dispatch(
                    args.url,
                    args.job_type,
                    args.entity_id,
                    then_watch=args.watch,
                    token=args.token,
                )
            )
        except KeyboardInterrupt:
            # Only the watching stops: the job goes on.
            print(file=sys.stderr)
            return 130
    from service.runtime import CannotStart

    try:
        return _run_local(settings, args)
    except CannotStart as exc:
        print(f"aijobs: {exc}", file=sys.stderr)
        return 2


def _run_local(settings: Settings, args: argparse.Namespace) -> int:
    """The commands that run against the database themselves."""
    if args.command in ("stats", "jobs"):
        configure_logging("warning", settings.log_format)
        try:
            print(_run(_report(settings, args)))
        except _NotMigrated as exc:
            print(f"aijobs: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "demo":
        from service import demo

        configure_logging(
            "warning" if settings.log_level == "info" else settings.log_level, settings.log_format
        )
        return _run(demo.run(settings, args.host, args.port, serve_after=not args.exit))

    configure_logging(settings.log_level, settings.log_format)
    from service import runtime

    if getattr(args, "insecure_dev_auth", False):
        settings = dataclasses.replace(settings, insecure_dev_auth=True)

    if args.command == "migrate":

        async def _migrate() -> None:
            async with runtime.database(settings) as dsn:
                applied = await runtime.run_migrations(settings, dsn)
                print(f"applied migrations {applied}" if applied else "migrations up to date")

        _run(_migrate())
        return 0
    if args.command == "worker" and args.processes > 1:
        return _run(_supervise(settings, args.processes, args.concurrency))
    if args.command == "worker" and not follow_supervisor():
        print("aijobs: the supervisor of this worker has exited", file=sys.stderr)
        return 1
    run_api = args.command in ("api", "serve")
    run_worker = args.command in ("worker", "serve")
    if run_api and settings.jwt_secret is None and not settings.insecure_dev_auth:
        print(
            "aijobs: AIJOBS_JWT_SECRET is not set, so the API cannot verify tokens. Set it "
            "(the JWT secret of your Supabase project, or any long random string), or pass "
            "--insecure-dev-auth to accept requests without a token for local development.",
            file=sys.stderr,
        )
        return 2
    from service.jobs.store import UserScopeUnavailable

    try:
        _run(
            runtime.serve(
                settings,
                api=run_api,
                worker=run_worker,
                host=getattr(args, "host", settings.host),
                port=getattr(args, "port", settings.port),
                concurrency=getattr(args, "concurrency", None),
            )
        )
    except UserScopeUnavailable as exc:
        print(f"aijobs: the API cannot start: {exc}", file=sys.stderr)
        return 2
    return 0
