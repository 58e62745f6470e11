"""The offline analyzer: a deterministic text-similarity analysis for when no API key is set.

It scores by how many of a requirement's (or control's) key terms the document uses. It is
no substitute for Claude, and every answer says that it came from here.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

from service.ai.analyzer import (
    NO_TEXT,
    Analysis,
    AnswerText,
    ControlText,
    DocumentText,
    Meter,
    RequirementText,
)
from service.ai.schemas import (
    ControlMappingBatch,
    ControlMatch,
    CoverageAssessment,
    DocumentScore,
    MatchAssessment,
)

PREFIX = "[offline analyzer] "
MAP_THRESHOLD = 40

_WORD = re.compile(r"[a-z][a-z0-9-]{2,}")
# A word and the spaces after it: what the offline analyzer writes at a time.
_WORDS = re.compile(r"\S+\s*|\s+")
_STOP = frozenset(
    (
        "the and for with that this shall are from have has its their them they will which all "
        "any into such must been being were was also each other than then when where who whom "
        "what within without upon about above after again against between both but can could did "
        "does doing down during few further here how more most not only own same should some very "
        "you your our ours out over under until while why would may might use used using ensure "
        "ensures including include includes based least per one two three organisation "
        "organization company information appropriate relevant defined documented"
    ).split()
)


def _stem(word: str) -> str:
    for suffix in ("ations", "ation", "ments", "ment", "ings", "ing", "ies", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def key_terms(text: str) -> list[str]:
    """Distinct stemmed content words, in order of first appearance."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word not in _STOP:
            seen.setdefault(_stem(word), None)
    return list(seen)


def _overlap(terms: Sequence[str], document_terms: set[str]) -> tuple[list[str], list[str]]:
    found = [t for t in terms if t in document_terms]
    missing = [t for t in terms if t not in document_terms]
    return found, missing


def _score(found: int, total: int) -> int:
    if total == 0:
        return 0
    return round(100 * found / total)


class OfflineAnalyzer:
    source = "offline"

    def __init__(self, delay_s: float = 0.0) -> None:
        # A pause per call, so that progress can be watched in a demo.
        self._delay_s = delay_s

    def model_for(self, job_type: str) -> str | None:
        return None

    async def _pause(self, text: AnswerText) -> None:
        # Followed live, the pause is spent writing the answer word by word instead.
        if self._delay_s > 0 and not text.wanted:
            await asyncio.sleep(self._delay_s)

    async def _write(self, text: AnswerText, pieces: Sequence[tuple[str, str, int | None]]) -> None:
        """Send each (field, text, control id) word by word, over the call's pause."""
        if not text.wanted:
            return
        words = [
            (answer_field, word, control_id)
            for answer_field, whole, control_id in pieces
            for word in _WORDS.findall(whole)
        ]
        step = self._delay_s / len(words) if words else 0.0
        for answer_field, word, control_id in words:
            if step > 0:
                await asyncio.sleep(step)
            if control_id is None:
                text.write(answer_field, word)
            else:
                text.write(answer_field, word, controlId=control_id)
        if not words and self._delay_s > 0:
            await asyncio.sleep(self._delay_s)

    async def match(
        self,
        requirement: RequirementText,
        document: DocumentText,
        meter: Meter,
        text: AnswerText = NO_TEXT,
    ) -> Analysis[MatchAssessment]:
        await self._pause(text)
        terms = key_terms(f"{requirement.title} {requirement.description}")
        found, missing = _overlap(terms, set(key_terms(document.content)))
        score = _score(len(found), len(terms))
        rationale = (
            f"{PREFIX}The document uses {len(found)} of the {len(terms)} key terms of "
            f"requirement {requirement.code}"
            + (f" ({', '.join(found[:8])})" if found else "")
            + "."
            + (f" Not found: {', '.join(missing[:8])}." if missing else "")
        )
        recommendations = [
            f"{PREFIX}Address '{term}' explicitly in the document." for term in missing[:5]
        ]
        await self._write(text, [("rationale", rationale, None)])
        return Analysis(
            MatchAssessment(score=score, rationale=rationale, recommendations=recommendations)
        )

    async def coverage(
        self,
        requirement: RequirementText,
        documents: Sequence[DocumentText],
        meter: Meter,
        text: AnswerText = NO_TEXT,
    ) -> Analysis[CoverageAssessment]:
        await self._pause(text)
        terms = key_terms(f"{requirement.title} {requirement.description}")
        covered: set[str] = set()
        scores = []
        for doc in documents:
            found, _ = _overlap(terms, set(key_terms(doc.content)))
            covered.update(found)
            scores.append(DocumentScore(document_id=doc.id, score=_score(len(found), len(terms))))
        missing = [t for t in terms if t not in covered]
        overall = _score(len(covered), len(terms))
        summary = (
            f"{PREFIX}Across {len(documents)} document(s), {len(covered)} of the {len(terms)} key "
            f"terms of requirement {requirement.code} appear."
            if documents
            else f"{PREFIX}No documents are mapped to requirement {requirement.code}."
        )
        gaps = [f"{PREFIX}No document addresses '{term}'." for term in missing[:10]]
        await self._write(text, [("summary", summary, None)])
        return Analysis(
            CoverageAssessment(coverage_score=overall, summary=summary, gaps=gaps, documents=scores)
        )

    async def map_controls(
        self,
        document: DocumentText,
        controls: Sequence[ControlText],
        meter: Meter,
        text: AnswerText = NO_TEXT,
    ) -> Analysis[ControlMappingBatch]:
        await self._pause(text)
        document_terms = set(key_terms(document.content))
        matches = []
        for control in controls:
            terms = key_terms(f"{control.title} {control.description}")
            found, _ = _overlap(terms, document_terms)
            confidence = _score(len(found), len(terms))
            if confidence >= MAP_THRESHOLD:
                matches.append(
                    ControlMatch(
                        control_id=control.id,
                        confidence=confidence,
                        rationale=f"{PREFIX}The document uses {len(found)} of {len(terms)} key "
                        f"terms of {control.code}: {', '.join(found[:6])}.",
                    )
                )
        await self._write(text, [("rationale", m.rationale, m.control_id) for m in matches])
        return Analysis(ControlMappingBatch(mapped_controls=matches))
