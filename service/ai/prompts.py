"""Prompts for the three analyses. Documents go in tagged blocks, ids stated plainly.

Nothing is cut here: a document too long for one request arrives as sections
(service/ai/sections.py), and each section says which part of the document it is.
"""

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


def _document(doc: DocumentText) -> str:
    if doc.sections > 1:
        return (
            f'<document id="{doc.id}" title="{doc.title}" '
            f'section="{doc.section} of {doc.sections}">\n{doc.content}\n</document>'
        )
    return f'<document id="{doc.id}" title="{doc.title}">\n{doc.content}\n</document>'


_SECTION_NOTE = (
    "This is one section of a longer document; sections overlap a little. Judge by this "
    "section alone: the other sections are assessed separately."
)


def match_prompt(req: RequirementText, doc: DocumentText) -> str:
    note = f"{_SECTION_NOTE}\n\n" if doc.sections > 1 else ""
    return (
        f"{_requirement(req)}\n\n{_document(doc)}\n\n{note}"
        "How well does this document satisfy this requirement? Score 0-100, explain why with "
        "reference to the document, and recommend concrete changes that would close the gaps."
    )


def coverage_prompt(req: RequirementText, docs: Sequence[DocumentText]) -> str:
    blocks = "\n\n".join(_document(d) for d in docs)
    note = (
        "Some documents are given as one section of a longer document; the rest of them are "
        "assessed separately.\n\n"
        if any(d.sections > 1 for d in docs)
        else ""
    )
    return (
        f"{_requirement(req)}\n\n{blocks}\n\n{note}"
        "Taken together, how well do these documents cover this requirement? Give an overall "
        "coverage score 0-100, a short summary, the gaps that remain, and a score for each "
        "document by its id."
    )


def map_controls_document(doc: DocumentText) -> str:
    if doc.sections > 1:
        return f"{_document(doc)}\n\n{_SECTION_NOTE}"
    return _document(doc)


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
