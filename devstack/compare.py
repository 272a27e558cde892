"""Compare what Salesforce holds with the source: the check behind "nothing lost or duplicated"."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from include.crm_export.config import Stream
from include.crm_export.db import source
from include.crm_export.mapping import map_row


@dataclass
class Comparison:
    stream: str
    source_rows: int = 0
    salesforce_records: int = 0
    missing: list[str] = field(default_factory=list)  # external ids in the source, not in Salesforce
    extra: list[str] = field(default_factory=list)  # in Salesforce, not in the source
    duplicated: list[str] = field(default_factory=list)
    different: dict[str, dict[str, tuple[Any, Any]]] = field(default_factory=dict)  # field: (source, Salesforce)

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.duplicated or self.different)

    def describe(self) -> str:
        if self.equal:
            return f"{self.stream}: Salesforce equals the source ({self.source_rows} records, field by field)"
        return (
            f"{self.stream}: {len(self.missing)} missing, {len(self.extra)} extra, {len(self.duplicated)} duplicated, "
            f"{len(self.different)} different (e.g. {dict(list(self.different.items())[:2])})"
        )


def compare(
    conn: psycopg.Connection,
    stream: Stream,
    salesforce_records: list[dict[str, Any]],
    parent_records: dict[str, list[dict[str, Any]]] | None = None,
) -> Comparison:
    """``parent_records``: Salesforce's records of each object the stream's lookups point at (by object name):
    a lookup must hold the Id of the parent whose external id the source row names."""
    types = source.column_types(conn, stream)
    expected: dict[str, dict[str, Any]] = {}
    for row in source.read_rows_by_key(conn, stream, source.all_keys(conn, stream), types):
        record = map_row(stream, row)
        if record.payload is not None and not record.delete:  # a row marked deleted: absent from Salesforce
            expected[record.external_id] = _with_parent_ids(stream, record.payload, parent_records or {})
    result = Comparison(stream.name, source_rows=len(expected), salesforce_records=len(salesforce_records))
    seen: dict[str, dict[str, Any]] = {}
    for record in salesforce_records:
        external_id = record.get(stream.external_id_field)
        if external_id in seen:
            result.duplicated.append(external_id)
        seen[external_id] = record
    result.missing = sorted(set(expected) - set(seen))
    result.extra = sorted(set(seen) - set(expected))
    for external_id in set(expected) & set(seen):
        diff = {
            name: (value, seen[external_id].get(name))
            for name, value in expected[external_id].items()
            if seen[external_id].get(name) != value
        }
        if diff:
            result.different[external_id] = diff
    return result


def _with_parent_ids(
    stream: Stream, payload: dict[str, Any], parent_records: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """The payload as Salesforce stores it: each parent named by external id becomes its Id (None: no parent
    with that external id in Salesforce, which the comparison then reports)."""
    fields = {k: v for k, v in payload.items() if k != "attributes"}
    for lookup in stream.lookups:
        for name, value in list(fields.items()):
            if isinstance(value, dict) and value.get("attributes", {}).get("type") == lookup.object:
                wanted = str(value[lookup.external_id_field]).lower()
                parents = parent_records.get(lookup.object, [])
                ids = [p["Id"] for p in parents if str(p.get(lookup.external_id_field) or "").lower() == wanted]
                del fields[name]
                fields[lookup.field] = ids[0] if len(ids) == 1 else f"<no single {lookup.object} {wanted}: {ids}>"
    return fields
