"""Source rows to Salesforce payloads. Pure: no I/O.

What each value becomes is :mod:`values`' decision. A row that cannot be
turned into a payload (no external id, a value the field cannot take)
becomes a :class:`RejectedRecord` for that record, so one bad row never
crashes a batch. Whether a value suits the Salesforce field (type,
length, required) is Salesforce's call: its answer is the error people need.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from include.crm_export.config import Lookup, Stream
from include.crm_export.errors import DUPLICATE_EXTERNAL_ID, INVALID_SOURCE_VALUE, MISSING_EXTERNAL_ID, RejectedRecord
from include.crm_export.quoting import shown
from include.crm_export.values import Unmappable, field_value

# Every source read also selects the key's PostgreSQL text form under this
# name: that is the record key stored in ExportErrors and in the watermark, and
# casting it back to the key's type finds the row (char(n), citext, uuid …).
RECORD_KEY = "crm_export$record_key"


@dataclass(frozen=True)
class SourceRecord:
    """One source row on its way to Salesforce."""

    key: str
    position: tuple[Any, ...]  # the row's order_by values
    external_id: str | None
    payload: dict[str, Any] | None  # None when the row cannot be mapped
    rejection: RejectedRecord | None = None
    fingerprint: int | None = None  # of the payload (fingerprints.py), once looked at
    unchanged: bool = False  # Salesforce confirmed exactly this payload last: nothing to send
    # The row is marked deleted (the stream's ``deletes``): its Salesforce record is deleted, found by its external
    # id; the payload then holds only the external id.
    delete: bool = False
    # Insert mode (``write_modes.py``): Salesforce has this record already, so it is left as it is. Not sent, so
    # also ``unchanged`` (confirmed as it is, no fingerprint written), but counted apart from the unchanged.
    exists_already: bool = False

    def looked_at(self, fingerprint: int, *, unchanged: bool) -> SourceRecord:
        """This record with its payload's fingerprint, and whether Salesforce holds that payload already: what
        ``dataclasses.replace`` makes, every other field as it is, a few times faster (every record read is
        fingerprinted on the export's busiest thread)."""
        copy = object.__new__(SourceRecord)
        copy.__dict__.update(self.__dict__, fingerprint=fingerprint, unchanged=unchanged)
        return copy

    def why_not_sent(self) -> RejectedRecord:
        """Why a record with no payload cannot be sent (every such record carries its rejection)."""
        if self.rejection is None:
            raise ValueError(f"record {self.key} has a payload; nothing keeps it from being sent")
        return self.rejection


def position_to_json(position: tuple[Any, ...]) -> list[str]:
    """The watermark as stored: the order_by values as exact text (PostgreSQL casts them back)."""
    out = []
    for value in position:
        if isinstance(value, datetime | date):
            out.append(value.isoformat())
        else:
            out.append(str(value))
    return out


def map_row(stream: Stream, row: dict[str, Any], field_types: dict[str, str] | None = None) -> SourceRecord:
    key = row[RECORD_KEY] if RECORD_KEY in row else str(row[stream.key])
    position = tuple(row[column] for column in stream.order_by)
    raw_external_id = row[stream.external_id_column]
    if _blank(raw_external_id):
        return _without_external_id(
            stream,
            key,
            position,
            f"Source column {stream.external_id_column} is empty, so the record has no {stream.external_id_field} "
            "to upsert by. Fill it in the source.",
        )
    external_id = str(raw_external_id)
    payload = _identified(stream, external_id)
    if stream.deletes_column is not None and marked_deleted(row[stream.deletes_column]):
        return deleted_record(stream, key, position, external_id)
    relationships = getattr(field_types, "relationships", None) or {}
    # Once per row, not per field (Stream.lookup builds it each time): a row's fields are asked on the busiest thread.
    lookups = stream.lookups_by_field() if stream.lookups else None
    for sf_field, column in stream.fields:
        lookup = lookups.get(sf_field.lower()) if lookups else None
        if sf_field in stream.keep_when_null and _no_value(row[column], lookup is not None):
            continue  # on_null: keep: sending nothing leaves Salesforce's value as it is
        if lookup is not None:
            relationship = relationships.get(sf_field)
            payload.update(parent_reference(lookup, row[column], relationship.name if relationship else None))
            continue
        try:
            payload[sf_field] = field_value(row[column], (field_types or {}).get(sf_field))
        except Unmappable as exc:
            return SourceRecord(
                key,
                position,
                external_id,
                None,
                RejectedRecord(INVALID_SOURCE_VALUE, f"Source column {column}: {exc}", (sf_field,)),
            )
    return SourceRecord(key, position, external_id, payload)


def deleted_record(stream: Stream, key: str, position: tuple[Any, ...], external_id: str | None) -> SourceRecord:
    """A source row that is deleted (marked deleted, or gone from a captured table): its Salesforce record is
    deleted, found by the external id; without one there is nothing to find it by, a rejected record."""
    if external_id is None or _blank(external_id):
        return _without_external_id(
            stream,
            key,
            position,
            f"Source row {shown(key)} is deleted, and what is known of it has no {stream.external_id_column}, so "
            f"there is no {stream.external_id_field} to find its Salesforce record by. Delete the record in "
            "Salesforce by hand if it is there, then mark this error resolved.",
        )
    return SourceRecord(key, position, external_id, _identified(stream, external_id), delete=True)


def _blank(external_id: Any) -> bool:
    return external_id is None or str(external_id).strip() == ""


def _identified(stream: Stream, external_id: str) -> dict[str, Any]:
    """The start of every payload: the object and the external id (all a delete needs)."""
    return {"attributes": {"type": stream.sobject}, stream.external_id_field: external_id}


def _without_external_id(stream: Stream, key: str, position: tuple[Any, ...], message: str) -> SourceRecord:
    """A record with no external id: nothing to find its Salesforce record by, a rejected record."""
    return SourceRecord(
        key, position, None, None, RejectedRecord(MISSING_EXTERNAL_ID, message, (stream.external_id_field,))
    )


def marked_deleted(value: Any) -> bool:
    """Whether a ``deletes`` column's value marks its row deleted: true in a boolean column, any value but NULL
    in another (``deleted_at``). A boolean NULL or false is a row that is not deleted."""
    if isinstance(value, bool):
        return value
    return value is not None


def _no_value(value: Any, is_lookup: bool) -> bool:
    """Null; for a lookup also empty text, which names no parent (:func:`parent_reference`)."""
    return value is None or (is_lookup and str(value).strip() == "")


def relationship_name(lookup_field: str) -> str:
    """A lookup field's relationship name as Salesforce forms it (``AccountId`` -> ``Account``,
    ``Primary_Contact__c`` -> ``Primary_Contact__r``); describe's ``relationshipName`` wins when known."""
    if lookup_field.endswith("__c"):
        return lookup_field[: -len("__c")] + "__r"
    return lookup_field.removesuffix("Id")


def parent_reference(lookup: Lookup, value: Any, relationship: str | None = None) -> dict[str, Any]:
    """What a lookup field's source value becomes in a payload: the parent by its external id under the
    relationship name ("Relationship Fields in Records": ``"Account": {"CRM_Account_Id__c": "A-17"}``, with
    ``attributes.type``, which a polymorphic lookup needs), or the lookup field itself cleared (null or
    empty source value). The parent's external id is its text, as the parent's own stream sends it."""
    if value is None or str(value).strip() == "":
        return {lookup.field: None}
    return {
        relationship or relationship_name(lookup.field): {
            "attributes": {"type": lookup.object},
            lookup.external_id_field: str(value),
        }
    }


def external_id_match_key(external_id: str, *, case_sensitive: bool = False) -> str:
    """The external id as Salesforce matches it: case-insensitively unless the field is case sensitive
    ("Field Types": External ID, Unique Case Insensitive / Case Sensitive)."""
    return external_id if case_sensitive else external_id.lower()


class ExternalIdOwners:
    """Which record took each external id first among records sent close together (a request, a job, a run).

    Two source rows with one external id are one Salesforce record: whichever
    landed last would overwrite the other in silence. The later row in source
    order becomes a rejected record naming both keys, on every path.
    ``remember``: how many of the latest claims are kept (the records that can
    still be in flight; older ones are committed and checked through
    ``crm_export.external_ids``).
    """

    def __init__(self, stream: Stream, *, case_sensitive: bool = False, remember: int | None = None) -> None:
        self.stream = stream
        self.case_sensitive = case_sensitive
        self.remember = remember
        self._owners: OrderedDict[str, str] = OrderedDict()

    def match_key(self, external_id: str) -> str:
        return external_id_match_key(external_id, case_sensitive=self.case_sensitive)

    def held_by(self, match_key: str, record_key: str) -> None:
        """``record_key`` holds ``match_key`` (reserved by an earlier batch or run, and still has it)."""
        self._owners[match_key] = record_key
        self._owners.move_to_end(match_key)

    def _claim(self, match_key: str, record_key: str) -> str:
        owner = self._owners.setdefault(match_key, record_key)
        self._owners.move_to_end(match_key)
        if self.remember is not None and len(self._owners) > self.remember:
            self._owners.popitem(last=False)
        return owner

    def check(self, record: SourceRecord) -> SourceRecord:
        if record.payload is None or record.external_id is None or record.delete:
            return record  # a deleted row holds no external id: another row may take it
        owner = self._claim(self.match_key(record.external_id), record.key)
        if owner == record.key:
            return record
        stream = self.stream
        return SourceRecord(
            record.key,
            record.position,
            record.external_id,
            None,
            RejectedRecord(
                DUPLICATE_EXTERNAL_ID,
                f"Source rows {shown(owner)} and {shown(record.key)} of {stream.source} both have "
                f"{stream.external_id_field} = {shown(record.external_id)}"
                f"{'' if self.case_sensitive else ' (Salesforce matches it case-insensitively)'}"
                f", so they are one Salesforce record and would overwrite each other. Row {shown(owner)} holds it; "
                f"give row {shown(record.key)} its own value in {stream.external_id_column} (or remove one of them).",
                (stream.external_id_field,),
            ),
        )

    def check_all(self, records: list[SourceRecord]) -> list[SourceRecord]:
        return [self.check(record) for record in records]
