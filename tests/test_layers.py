"""The dependency arrows of ARCHITECTURE.md, checked on the imports themselves."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parent.parent / "service"


def imports_of(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (SERVICE / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[str(path.relative_to(SERVICE))] = names
    return found


def offenders(package: str, banned: tuple[str, ...]) -> list[str]:
    return [
        f"{path} imports {name}"
        for path, names in imports_of(package).items()
        for name in sorted(names)
        if name.startswith(banned)
    ]


def test_jobs_knows_nothing_of_ai_http_or_the_domain() -> None:
    banned = ("service.ai", "service.api", "service.entities", "anthropic", "aiohttp")
    assert offenders("jobs", banned) == []


def test_ai_knows_nothing_of_http() -> None:
    assert offenders("ai", ("service.api", "aiohttp")) == []


def test_nothing_below_imports_the_api() -> None:
    for package in ("jobs", "ai", "db", "entities"):
        assert offenders(package, ("service.api",)) == []
