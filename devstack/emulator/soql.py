"""The subset of SOQL the emulator answers: enough to read records back.

    SELECT f1, f2 FROM Object [WHERE cond [AND cond …]] [ORDER BY f [ASC|DESC]] [LIMIT n]
    SELECT COUNT() FROM Object [WHERE …]

where cond is ``field = literal``, ``!=``, ``<``, ``>``, ``<=``, ``>=``,
``field IN (literal, …)`` or ``field LIKE 'pattern%'``; literals are quoted
strings, numbers, true, false and null.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from devstack.emulator.schema import RequestRejected

_QUERY = re.compile(
    r"^\s*SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<object>\w+)"
    r"(?:\s+WHERE\s+(?P<where>.+?))?"
    r"(?:\s+ORDER\s+BY\s+(?P<order>\w+)(?:\s+(?P<direction>ASC|DESC))?)?"
    r"(?:\s+LIMIT\s+(?P<limit>\d+))?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_CONDITION = re.compile(
    r"^\s*(?P<field>\w+)\s*(?:(?P<op>!=|<=|>=|=|<|>)\s*(?P<literal>'(?:[^'\\]|\\.)*'|[\w.\-:+]+)"
    r"|\s+(?P<in>IN)\s*\((?P<list>[^)]*)\)|\s+(?P<like>LIKE)\s+(?P<pattern>'(?:[^'\\]|\\.)*'))\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Query:
    fields: tuple[str, ...]
    object: str
    conditions: tuple[tuple[str, str, Any], ...]
    order_by: str | None
    descending: bool
    limit: int | None
    count_only: bool


def _literal(text: str) -> Any:
    text = text.strip()
    if text.startswith("'"):
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    lowered = text.lower()
    if lowered == "null":
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text  # date literals such as 2024-01-01 compare as text


def _split_and(where: str) -> list[str]:
    parts, depth, quoted, current = [], 0, False, []
    tokens = re.split(r"(\s+AND\s+)", where, flags=re.IGNORECASE)
    for token in tokens:
        if re.fullmatch(r"\s+AND\s+", token, flags=re.IGNORECASE) and depth == 0 and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(token)
        for char in token:
            if char == "'":
                quoted = not quoted
            elif char == "(" and not quoted:
                depth += 1
            elif char == ")" and not quoted:
                depth -= 1
    parts.append("".join(current))
    return parts


def parse(soql: str) -> Query:
    match = _QUERY.match(soql)
    if not match:
        raise RequestRejected(400, "MALFORMED_QUERY", f"The emulator cannot parse this query: {soql}")
    field_text = match.group("fields").strip()
    count_only = field_text.upper().replace(" ", "") == "COUNT()"
    fields = () if count_only else tuple(f.strip() for f in field_text.split(","))
    conditions = []
    if match.group("where"):
        for part in _split_and(match.group("where")):
            cond = _CONDITION.match(part)
            if not cond:
                raise RequestRejected(400, "MALFORMED_QUERY", f"unexpected token in WHERE: {part.strip()}")
            if cond.group("in"):
                values = [_literal(v) for v in cond.group("list").split(",") if v.strip()]
                conditions.append((cond.group("field"), "in", values))
            elif cond.group("like"):
                conditions.append((cond.group("field"), "like", _literal(cond.group("pattern"))))
            else:
                conditions.append((cond.group("field"), cond.group("op"), _literal(cond.group("literal"))))
    return Query(
        fields=fields,
        object=match.group("object"),
        conditions=tuple(conditions),
        order_by=match.group("order"),
        descending=(match.group("direction") or "").upper() == "DESC",
        limit=int(match.group("limit")) if match.group("limit") else None,
        count_only=count_only,
    )


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if op == "=":
        return actual == expected
    if op == "!=":
        return actual != expected
    if op == "in":
        return actual in expected
    if op == "like":
        if actual is None:
            return False
        pattern = "^" + re.escape(expected).replace("%", ".*").replace("_", ".") + "$"
        return re.match(pattern, str(actual), re.IGNORECASE) is not None
    if actual is None or expected is None:
        return False
    try:
        if op == "<":
            return actual < expected
        if op == ">":
            return actual > expected
        if op == "<=":
            return actual <= expected
        return actual >= expected
    except TypeError:
        return False


def run(query: Query, records: list[dict[str, Any]], field_names: dict[str, str]) -> list[dict[str, Any]]:
    """Filter, sort and limit ``records`` (full records); ``field_names`` maps lower-case to canonical names."""

    def canonical(name: str) -> str:
        try:
            return field_names[name.lower()]
        except KeyError:
            raise RequestRejected(
                400, "INVALID_FIELD", f"No such column '{name}' on entity '{query.object}'."
            ) from None

    conditions = [(canonical(f), op, v) for f, op, v in query.conditions]
    for name in query.fields:
        canonical(name)
    rows = [r for r in records if all(_compare(r.get(f), op, v) for f, op, v in conditions)]
    if query.order_by:
        key = canonical(query.order_by)
        rows.sort(
            key=lambda r: (r.get(key) is None, r.get(key) if r.get(key) is not None else ""), reverse=query.descending
        )
    if query.limit is not None:
        rows = rows[: query.limit]
    return rows


def selected_fields(query: Query, field_names: dict[str, str]) -> list[str]:
    return [field_names.get(f.lower(), f) for f in query.fields]
