"""Named SQL queries kept in `.sql` files next to the code that runs them.

A file holds blocks that start with `-- name: some_name`; the text up to the next such line
is the query.
"""

from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    queries: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        name = match.group(1)
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body
    return queries


class Queries:
    """The queries of one `.sql` file, as attributes: `q.claim_jobs`."""

    def __init__(self, package: str, filename: str) -> None:
        text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
        self._queries = parse_queries(text)

    def __getattr__(self, name: str) -> str:
        try:
            return self._queries[name]
        except KeyError:
            raise AttributeError(f"no query named {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._queries)
