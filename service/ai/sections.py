"""Documents too long for one request, split into overlapping sections.

A section ends at the last paragraph break (else line break, sentence end, space) in its final
fifth, and the next one starts at the first paragraph (else line, else word) that begins in the
last `overlap` characters of the one before: a passage shorter than the overlap that one
section's end cuts is whole in the next section.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from service.ai.analyzer import DocumentText

_BREAKS = ("\n\n", "\n", ". ", " ")


def split_document(
    document: DocumentText, max_chars: int | None, overlap_chars: int
) -> list[DocumentText]:
    """The document as sections of at most `max_chars` characters; itself when it fits."""
    content = document.content
    if max_chars is None or len(content) <= max_chars:
        return [document]
    # An overlap that large would make sections that hardly move forward.
    overlap = max(0, min(overlap_chars, max_chars // 4))
    bounds: list[tuple[int, int]] = []
    start = 0
    while True:
        if len(content) - start <= max_chars:
            bounds.append((start, len(content)))
            break
        end = _end_before(content, start + max_chars, start + max_chars * 4 // 5)
        bounds.append((start, end))
        start = _start_after(content, end - overlap, end)
    total = len(bounds)
    return [
        dataclasses.replace(document, content=content[a:b], section=i, sections=total)
        for i, (a, b) in enumerate(bounds, start=1)
    ]


def _end_before(text: str, limit: int, earliest: int) -> int:
    """The last natural break in text[earliest:limit], just after it; else `limit`."""
    for mark in _BREAKS:
        found = text.rfind(mark, earliest, limit)
        if found != -1:
            return found + len(mark)
    return limit


def _start_after(text: str, position: int, latest: int) -> int:
    """The first paragraph (else line, else word) start in text[position:latest]; else
    `position`."""
    for mark in ("\n\n", "\n", " "):
        found = text.find(mark, position, latest)
        if found == -1:
            continue
        start = found + len(mark)
        while start < latest and text[start].isspace():
            start += 1
        if start < latest:
            return start
    return position


def pack_sections(
    sections: Sequence[DocumentText], max_chars: int | None
) -> list[list[DocumentText]]:
    """Sections of several documents in groups of at most `max_chars` characters in all,
    keeping their order; one group when there is no limit."""
    if max_chars is None:
        return [list(sections)]
    groups: list[list[DocumentText]] = []
    size = 0
    for section in sections:
        length = len(section.content)
        if groups and size + length <= max_chars:
            groups[-1].append(section)
            size += length
        else:
            groups.append([section])
            size = length
    return groups or [[]]
