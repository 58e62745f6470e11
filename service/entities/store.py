"""EntityStore: every query of the domain tables, run through one class."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from service.db.pool import Connection
from service.db.queries import Queries

Q = Queries("service.entities", "queries.sql")

Row = dict[str, Any]


@dataclass(frozen=True)
class ControlInput:
    code: str
    title: str
    description: str


@dataclass(frozen=True)
class MappingForAnalysis:
    id: int
    requirement_id: int
    document_id: int
    requirement_code: str
    requirement_title: str
    requirement_description: str
    document_title: str
    document_content: str


@dataclass(frozen=True)
class ControlMatchRow:
    control_id: int
    confidence: int
    rationale: str


class EntityNotFound(LookupError):
    pass


# Mappings read in one statement at most: their documents' contents travel together.
MAPPINGS_PER_READ = 32
# Reads of mappings on their way at once.
MAPPING_READS_AT_ONCE = 4


class EntityStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._mappings = _MappingReads(pool)

    # -- creation and reads ------------------------------------------------------------

    async def create_requirement(self, code: str, title: str, description: str) -> Row:
        return dict(await self._one(Q.insert_requirement, code, title, description))

    async def get_requirement(self, requirement_id: int) -> Row | None:
        return await self._maybe(Q.get_requirement, requirement_id)

    async def create_document(self, title: str, content: str) -> Row:
        return dict(await self._one(Q.insert_document, title, content))

    async def get_document(self, document_id: int) -> Row | None:
        return await self._maybe(Q.get_document, document_id)

    async def create_controls(self, controls: Sequence[ControlInput]) -> list[Row]:
        rows = await self.pool.fetch(
            Q.insert_controls,
            [c.code for c in controls],
            [c.title for c in controls],
            [c.description for c in controls],
        )
        return [dict(r) for r in rows]

    async def list_controls(self) -> list[Row]:
        return [dict(r) for r in await self.pool.fetch(Q.list_controls)]

    async def count_controls(self) -> int:
        count: int = await self.pool.fetchval(Q.count_controls)
        return count

    async def create_mapping(self, requirement_id: int, document_id: int) -> Row:
        return dict(await self._one(Q.insert_mapping, requirement_id, document_id))

    async def get_mapping(self, mapping_id: int) -> Row | None:
        return await self._maybe(Q.get_mapping, mapping_id)

    async def mapping_for_analysis(self, mapping_id: int) -> MappingForAnalysis | None:
        """The mapping with its requirement and document; None when it does not exist.

        Jobs that start together ask together: see _MappingReads.
        """
        return await self._mappings.get(mapping_id)

    async def mapped_documents(self, requirement_id: int) -> list[Row]:
        return [dict(r) for r in await self.pool.fetch(Q.mapped_documents, requirement_id)]

    async def find_requirement_by_code(self, code: str) -> Row | None:
        return await self._maybe(Q.find_requirement_by_code, code)

    async def find_document_by_title(self, title: str) -> Row | None:
        return await self._maybe(Q.find_document_by_title, title)

    async def find_mapping(self, requirement_id: int, document_id: int) -> Row | None:
        return await self._maybe(Q.find_mapping, requirement_id, document_id)

    async def existing_control_codes(self, codes: Sequence[str]) -> set[str]:
        return {r["code"] for r in await self.pool.fetch(Q.existing_control_codes, list(codes))}

    async def document_controls(self, document_id: int) -> list[Row]:
        return [dict(r) for r in await self.pool.fetch(Q.document_controls, document_id)]

    # -- lists, in id order ------------------------------------------------------------

    async def list_requirements(self, limit: int) -> list[Row]:
        return [dict(r) for r in await self.pool.fetch(Q.list_requirements, limit)]

    async def list_documents(self, limit: int) -> list[Row]:
        """Documents without their content; `length` is its number of characters."""
        return [dict(r) for r in await self.pool.fetch(Q.list_documents, limit)]

    async def list_mappings(self, limit: int) -> list[Row]:
        """Mappings with their requirement's code and title and their document's title."""
        return [dict(r) for r in await self.pool.fetch(Q.list_mappings, limit)]

    # -- effects of analyses, each run inside the job's completing transaction -----------

    @staticmethod
    async def write_match_result(
        conn: Connection,
        mapping_id: int,
        score: int,
        rationale: str,
        recommendations: list[str],
    ) -> None:
        if (
            await conn.fetchval(Q.write_match_result, mapping_id, score, rationale, recommendations)
            is None
        ):
            raise EntityNotFound(f"Mapping {mapping_id} was deleted while it was being analysed")

    @staticmethod
    async def write_coverage_result(
        conn: Connection,
        requirement_id: int,
        score: int,
        summary: str,
        gaps: list[str],
        documents: list[dict[str, int]],
    ) -> None:
        written = await conn.fetchval(
            Q.write_coverage_result, requirement_id, score, summary, gaps, documents
        )
        if written is None:
            raise EntityNotFound(
                f"Requirement {requirement_id} was deleted while it was being analysed"
            )

    @staticmethod
    async def replace_document_controls(
        conn: Connection,
        document_id: int,
        matches: Sequence[ControlMatchRow],
        job_id: uuid.UUID,
    ) -> None:
        if await conn.fetchval(Q.lock_document, document_id) is None:
            raise EntityNotFound(f"Document {document_id} was deleted while it was being analysed")
        await conn.execute(Q.clear_document_controls, document_id)
        await conn.execute(
            Q.insert_document_controls,
            document_id,
            [m.control_id for m in matches],
            [m.confidence for m in matches],
            [m.rationale for m in matches],
            job_id,
        )

    # -- helpers ---------------------------------------------------------------------------

    async def _one(self, query: str, *args: Any) -> asyncpg.Record:
        row = await self.pool.fetchrow(query, *args)
        assert row is not None
        return row

    async def _maybe(self, query: str, *args: Any) -> Row | None:
        row = await self.pool.fetchrow(query, *args)
        return dict(row) if row else None


class _MappingReads:
    """Reads of mappings for analysis, coalesced: a read starts at once while fewer than
    MAPPING_READS_AT_ONCE are on their way; otherwise the mapping waits for the next read to
    finish, which then reads every mapping waiting (up to MAPPINGS_PER_READ) in one statement.
    A burst of jobs thus costs a few round trips, and a lone job none more than before."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wanted: dict[int, list[asyncio.Future[MappingForAnalysis | None]]] = {}
        self._readers: set[asyncio.Task[None]] = set()

    async def get(self, mapping_id: int) -> MappingForAnalysis | None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # What an earlier event loop left behind will never be answered there.
            self._loop, self._wanted, self._readers = loop, {}, set()
        future: asyncio.Future[MappingForAnalysis | None] = loop.create_future()
        self._wanted.setdefault(mapping_id, []).append(future)
        # A reader that has returned but whose done-callback has not run yet serves nothing
        # more: count only those still reading (each looks at what waits before it returns).
        if sum(not reader.done() for reader in self._readers) < MAPPING_READS_AT_ONCE:
            reader = loop.create_task(self._read(), name="mapping-reads")
            self._readers.add(reader)
            reader.add_done_callback(self._readers.discard)
        return await future

    async def _read(self) -> None:
        """Reads while mappings wait, on one connection while the reads follow each other."""
        while self._wanted:
            try:
                async with self._pool.acquire() as conn:
                    while self._wanted:
                        await self._read_some(conn)
            except _ReadFailed:
                continue
            except Exception as exc:
                # No connection to be had: what waits fails, as it would have on its own.
                waiting, self._wanted = self._wanted, {}
                _fail([f for futures in waiting.values() for f in futures], exc)

    async def _read_some(self, conn: Connection) -> None:
        ids = list(itertools.islice(self._wanted, MAPPINGS_PER_READ))
        waiting = [self._wanted.pop(i) for i in ids]
        try:
            rows = await conn.fetch(Q.get_mappings_for_analysis, ids)
        except Exception as exc:
            _fail([f for futures in waiting for f in futures], exc)
            # The connection goes back (replaced by the pool when it broke).
            raise _ReadFailed from exc
        except BaseException:
            for futures in waiting:
                for future in futures:
                    future.cancel()
            raise
        found = {row["id"]: MappingForAnalysis(**dict(row)) for row in rows}
        for mapping_id, futures in zip(ids, waiting, strict=True):
            for future in futures:
                if not future.done():
                    future.set_result(found.get(mapping_id))


class _ReadFailed(Exception):
    """A read failed; its waiters have been told so."""


def _fail(futures: list[asyncio.Future[MappingForAnalysis | None]], exc: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)
