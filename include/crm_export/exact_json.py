"""JSON with exact decimals. Pure: no I/O.

``json`` writes a ``Decimal`` only by way of ``float``, which turns
``9999999999999999.99`` into ``1e16``. Salesforce number and currency fields
take up to 18 digits, so payloads keep source numerics as ``Decimal`` and are
written with :func:`dumps`, which puts each one on the wire digit for digit.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

# NUL cannot occur in PostgreSQL text, so this marker never collides with source data.
_MARK = "\x00decimal:"
_MARKED = re.compile(r'"\\u0000decimal:([-+0-9.Ee]+)"')
_ESCAPED_MARK = "\\u0000decimal:"  # the marker as json.dumps writes it (NUL escaped)


def _mark(value: Any) -> Any:
    if isinstance(value, Decimal):
        return f"{_MARK}{value}"
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that writes every finite ``Decimal`` as a JSON number with exactly its digits."""
    text = json.dumps(value, default=_mark, **kwargs)
    # Most payloads hold no Decimal: a substring test is far cheaper than the regex's scan (every record's
    # fingerprint and every request body come through here).
    return _MARKED.sub(r"\1", text) if _ESCAPED_MARK in text else text


def loads(text: str | bytes) -> Any:
    """``json.loads`` that reads every non-integer number as a ``Decimal`` (nothing lost on the way)."""
    return json.loads(text, parse_float=Decimal)
