"""Source values put into text that someone pastes, a mail client parses or a browser follows.

A record key or a stream name comes from the user's database or stream file
and may hold anything: quotes, line breaks, ``%``, ``#``. Each context gets
its own quoting here, once, and every message uses it:

- ``sql_literal``: a PostgreSQL string literal (``'`` doubled, and a
  backslash escaped in an ``E''`` string), so a pasted statement does
  exactly what it says.
- ``shown``: a value in prose, on one line: as it is when printable, else
  JSON-quoted with its control characters escaped, and cut when very long.
- ``one_line``: a mail header or a subject: no line break can start a new
  header (RFC 5322 2.2: a header field ends at CRLF).
- ``soql_literal``: a SOQL string literal (quotes, backslashes and line
  breaks escaped as "Quoted String Escape Sequences" lists them).
- ``url_segment``: one path segment of a link, percent-encoded (RFC 3986
  3.3), so ``#``, ``?`` and ``/`` in a run id stay in the run id.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

SHOWN_MAX_CHARS = 200
# Shown as they are: keys like 137, C-00042, 2026-01-01T00:00:00Z, ann@example.com. Anything else is quoted.
_PLAIN = re.compile(r"^[\w.:@+\-/]+$")
# Line breaks, control and format characters (bidirectional overrides, zero-width spaces): never shown raw.
_CONTROL = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]"
)


def sql_literal(text: str) -> str:
    """``text`` as a PostgreSQL string literal, whatever ``standard_conforming_strings`` is.

    A text with a backslash becomes an escape string (``E'...'``, backslashes
    doubled), which PostgreSQL reads the same way under either setting
    (PostgreSQL docs, 4.1.2.2 "String Constants with C-Style Escapes").
    """
    quoted = text.replace("\x00", "\ufffd").replace("'", "''")
    if "\\" in quoted:
        return "E'" + quoted.replace("\\", "\\\\") + "'"
    return "'" + quoted + "'"


def sql_identifier(name: str) -> str:
    """``name`` as a quoted PostgreSQL identifier, for a statement a message tells a person to run."""
    return '"' + name.replace('"', '""') + '"'


def shown(text: str | None, *, none: str = "none") -> str:
    """A source value for prose: as it is when it is a plain token, else JSON-quoted; one line, bounded.

    Quoting anything but a plain token keeps a key from passing for the prose around it (``T-9). Details:
    DELETE …``), from looking like another key (a right-to-left override) and from reading as ``none``.
    """
    if text is None:
        return none
    cut = text[:SHOWN_MAX_CHARS]
    if not _PLAIN.match(cut) or cut == none:
        cut = _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(cut, ensure_ascii=False))
    return cut if len(text) <= SHOWN_MAX_CHARS else f"{cut}… ({len(text):,} characters)"


def one_line(text: str) -> str:
    """Text for a header: every run of control characters (CR and LF among them) becomes one space."""
    return re.sub(f"(?:{_CONTROL.pattern})+", " ", text).strip()


def url_segment(text: str) -> str:
    """One path segment of a URL: everything but unreserved characters percent-encoded."""
    return quote(text, safe="")


_SOQL_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f", '"': '\\"'}


def soql_literal(text: str) -> str:
    """``text`` as a SOQL string literal ("Quoted String Escape Sequences", SOQL and SOSL Reference)."""
    return "'" + "".join(_SOQL_ESCAPES.get(char, char) for char in text) + "'"


def sentence(text: str) -> str:
    """Text ending as a sentence ends (a period unless it ends with one, or with ! or ?), so prose can follow."""
    text = text.rstrip()
    return text if not text or text[-1] in ".!?" else f"{text}."
