"""The text of one field of a JSON document that arrives in pieces, as it grows.

A model forced to call a tool streams the tool's input as JSON, a few characters at a time
(`input_json_delta`). `FieldText` reads those pieces once each, keeping only the state of
the scan (never the document), and gives back what each piece added to the string values
of one key, wherever they sit in the document (`rationale` of every control in a list, say),
with the latest integer value of a sibling key read before it (the control's id).
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass

# Where a scan outside strings may change state: everything else (numbers, literals, spaces)
# matters only as the value of the tag key.
_STRUCTURE = re.compile(r'["{}\[\],:]')
# Where a string may end or escape.
_STRING_STOP = re.compile(r'["\\]')
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r"}
_SIMPLE_ESCAPES["t"] = "\t"


@dataclass(frozen=True, slots=True)
class Piece:
    """Text added to the value of the followed key; `tag`: the tag key's latest value."""

    text: str
    tag: int | None


class FieldText:
    """Follows the string values of `field` through a JSON document fed in pieces.

    `tag`: the name of an integer key whose latest value goes with each piece (a value read
    before the string, as a model writes `control_id` before `rationale`).
    """

    def __init__(self, field: str, tag: str | None = None) -> None:
        self._field = field
        self._tag = tag
        self._tag_value: int | None = None
        # Containers open: "{" or "["; whether the next string of an object is a key.
        self._stack: list[str] = []
        self._expect_key = False
        self._in_string = False
        self._string_is_key = False
        self._capturing = False
        self._key = ""
        self._key_parts: list[str] = []
        self._escape = ""  # an escape sequence begun in one piece and ended in a later one
        self._number = ""  # the tag's value, being read
        self._reading_number = False
        # The key the value being read belongs to.
        self._value_key: str | None = None
        self._pending_high = ""  # a high surrogate escape waiting for its low half

    def feed(self, chunk: str) -> list[Piece]:
        """What `chunk` added to the followed values, in order (pieces of one value merged)."""
        out: list[Piece] = []
        i, n = 0, len(chunk)
        while i < n:
            if self._in_string:
                i = self._string(chunk, i, out)
                continue
            if self._reading_number:
                j = _STRUCTURE.search(chunk, i)
                end = j.start() if j else n
                self._number += chunk[i:end]
                i = end
                if j is None:
                    break
                self._end_number()
                continue
            m = _STRUCTURE.search(chunk, i)
            if m is None:
                self._scalar(chunk[i:])
                break
            if m.start() > i:
                self._scalar(chunk[i : m.start()])
            i = m.end()
            self._structure(m.group())
        return _merged(out)

    # -- outside strings ---------------------------------------------------------------------

    def _scalar(self, text: str) -> None:
        """Characters of a number or literal (or spaces) outside strings."""
        stripped = text.strip()
        if not stripped:
            return
        if self._tag is not None and self._value_key == self._tag:
            self._reading_number = True
            self._number += stripped

    def _end_number(self) -> None:
        self._reading_number = False
        with contextlib.suppress(ValueError):
            self._tag_value = int(self._number.strip())
        self._number = ""

    def _structure(self, char: str) -> None:
        if char == '"':
            self._in_string = True
            self._string_is_key = bool(self._stack) and self._stack[-1] == "{" and self._expect_key
            self._capturing = not self._string_is_key and self._value_key == self._field
            self._key_parts = []
            return
        if char == "{":
            self._stack.append("{")
            self._expect_key = True
            self._value_key = None
        elif char == "[":
            self._stack.append("[")
            self._expect_key = False
        elif char in "}]":
            if self._stack:
                self._stack.pop()
            self._expect_key = False
            self._value_key = None
        elif char == ",":
            self._expect_key = bool(self._stack) and self._stack[-1] == "{"
            if self._expect_key:
                self._value_key = None
        elif char == ":":
            self._value_key = self._key
            self._expect_key = False

    # -- inside strings ----------------------------------------------------------------------

    def _string(self, chunk: str, i: int, out: list[Piece]) -> int:
        n = len(chunk)
        if self._escape:
            if len(self._escape) == 1:
                self._escape += chunk[i]
                i += 1
            need = 6 if self._escape[1] == "u" else 2
            take = chunk[i : i + need - len(self._escape)]
            self._escape += take
            i += len(take)
            if len(self._escape) < need:
                return i
            self._emit(self._decode_escape(self._escape), out)
            self._escape = ""
            return i
        m = _STRING_STOP.search(chunk, i)
        end = m.start() if m else n
        if end > i:
            self._emit(chunk[i:end], out)
        if m is None:
            return n
        if m.group() == '"':
            self._in_string = False
            if self._string_is_key:
                self._key = "".join(self._key_parts)
            self._capturing = False
            return end + 1
        self._escape = "\\"
        return self._string(chunk, end + 1, out) if end + 1 < n else n

    def _decode_escape(self, escape: str) -> str:
        if escape[1] != "u":
            return _SIMPLE_ESCAPES.get(escape[1], escape[1])
        code = int(escape[2:], 16) if re.fullmatch(r"[0-9a-fA-F]{4}", escape[2:]) else 0xFFFD
        if 0xD800 <= code <= 0xDBFF:
            self._pending_high = escape
            return ""
        if 0xDC00 <= code <= 0xDFFF and self._pending_high:
            pair = self._pending_high + escape
            self._pending_high = ""
            decoded: str = json.loads(f'"{pair}"')
            return decoded
        self._pending_high = ""
        return chr(code)

    def _emit(self, text: str, out: list[Piece]) -> None:
        if self._string_is_key:
            self._key_parts.append(text)
        elif self._capturing and text:
            out.append(Piece(text, self._tag_value))


def _merged(pieces: list[Piece]) -> list[Piece]:
    if len(pieces) < 2:
        return pieces
    merged = [pieces[0]]
    for piece in pieces[1:]:
        last = merged[-1]
        if piece.tag == last.tag:
            merged[-1] = Piece(last.text + piece.text, last.tag)
        else:
            merged.append(piece)
    return merged
