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
- ``url_segment``: one path segment of a link, percent-encoded (RFC 3986
  3.3), so ``#``, ``?`` and ``/`` in a run id stay in the run id.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

SHOWN_MAX_CHARS = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


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


def shown(text: str | None, *, none: str = "none") -> str:
    """A source value for prose: one line, unambiguous, bounded."""
    if text is None:
        return none
    cut = text if len(text) <= SHOWN_MAX_CHARS else text[:SHOWN_MAX_CHARS]
    if _CONTROL.search(cut) or cut != cut.strip() or cut == "":
        cut = json.dumps(cut, ensure_ascii=False)
        cut = _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", cut)  # U+2028 and C1 controls too
    return cut if len(text) <= SHOWN_MAX_CHARS else f"{cut}… ({len(text):,} characters)"


def one_line(text: str) -> str:
    """Text for a header: every run of control characters (CR and LF among them) becomes one space."""
    return re.sub(f"(?:{_CONTROL.pattern})+", " ", text).strip()


def url_segment(text: str) -> str:
    """One path segment of a URL: everything but unreserved characters percent-encoded."""
    return quote(text, safe="")
