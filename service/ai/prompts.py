"""Prompts for the three analyses. Documents go in tagged blocks, ids stated plainly."""

from __future__ import annotations

from collections.abc import Sequence

from service.ai.analyzer import ControlText, DocumentText, RequirementText

SYSTEM = (
    "You are a meticulous information-security compliance analyst. You assess policy "
    "documents against requirements and control catalogues. Judge only by what the documents "
    "actually say; an intention or a vague mention is partial coverage at best. Be concrete "
    "and brief. Always answer by calling the tool you are given."
)


def _requirement(req: RequirementText) -> str:
    return (
        f'<requirement id="{req.id}" code="{req.code}">\n'
        f"Title: {req.title}\n{req.description}\n</requirement>"
    )


def _document(doc: DocumentText, max_chars: int) -> str:
    content = doc.content
    if len(content) > max_chars:
        content = content[:max_chars] + "\n[... document truncated ...]"
    return f'<document id="{doc.id}" title="{doc.title}">\n{content}\n</document>'


def match_prompt(req: RequirementText, doc: DocumentText, max_chars: int) -> str:
    return (
        f"{_requirement(req)}\n\n{_document(doc, max_chars)}\n\n"
        "How well does this document satisfy this requirement? Score 0-100, explain why with "
        "reference to the document, and recommend concrete changes that would close the gaps."
    )


def coverage_prompt(req: RequirementText, docs: Sequence[DocumentText], max_chars: int) -> str:
    per_doc = max(2000, max_chars // max(len(docs), 1))
    blocks = "\n\n".join(_document(d, per_doc) for d in docs)
    return (
        f"{_requirement(req)}\n\n{blocks}\n\n"
        "Taken together, how well do these documents cover this requirement? Give an overall "
        "coverage score 0-100, a short summary, the gaps that remain, and a score for each "
        "document by its id."
    )


def map_controls_document(doc: DocumentText, max_chars: int) -> str:
    return _document(doc, max_chars)


def map_controls_prompt(controls: Sequence[ControlText]) -> str:
    lines = "\n".join(
        f'<control id="{c.id}" code="{c.code}">{c.title}: {c.description}</control>'
        for c in controls
    )
    return (
        f"<controls>\n{lines}\n</controls>\n\n"
        "Which of these controls does the document above implement? List only those it "
        "implements, by id, with your confidence 0-100 and the passage or reason that shows it."
    )
