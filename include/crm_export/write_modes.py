"""How a stream writes (``mode``): what each record becomes once it is known whether Salesforce has it. Pure.

- ``upsert`` (the default): create or update by external id; nothing to ask.
- ``update``: never creates. A record Salesforce does not have is a rejected
  record (``CRM_EXPORT_NOT_IN_SALESFORCE``) like any other: the pause rules
  apply and the re-export sends it again once Salesforce has it.
- ``insert``: creates only. A record Salesforce has already is left as it is:
  not sent, the watermark passes it, counted as "in Salesforce already"
  (apart from the unchanged: its payload may differ from what Salesforce holds).

A record to delete is deleted in every mode (``deletes.py``).

Whether Salesforce has a record is asked with one SOQL query per request
(``CollectionWriter.existing``), just before the records are sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from include.crm_export.config import Stream
from include.crm_export.errors import NOT_IN_SALESFORCE, RejectedRecord
from include.crm_export.mapping import SourceRecord
from include.crm_export.quoting import shown

UPSERT = "upsert"
UPDATE = "update"
INSERT = "insert"


def asks_salesforce(stream: Stream) -> bool:
    return stream.mode != UPSERT


def apply_mode(
    stream: Stream, records: list[SourceRecord], existing: set[str], match_key: Callable[[str], str]
) -> list[SourceRecord]:
    """The records as the stream's mode sends them; ``existing``: the match keys of the external ids Salesforce
    has."""
    if stream.mode == UPSERT:
        return records
    out = []
    for record in records:
        if record.payload is None or record.unchanged or record.external_id is None or record.delete:
            out.append(record)
            continue
        there = match_key(record.external_id) in existing
        if stream.mode == UPDATE and not there:
            rejection = RejectedRecord(
                NOT_IN_SALESFORCE,
                f"Salesforce has no {stream.sobject} with {stream.external_id_field} = "
                f"{shown(record.external_id)}, and stream '{stream.name}' only updates (mode: update). Create it in "
                "Salesforce (or let another "
                "stream create it); the re-export sends this record again.",
                (stream.external_id_field,),
            )
            out.append(replace(record, payload=None, rejection=rejection))
        elif stream.mode == INSERT and there:
            # Left as Salesforce has it; no fingerprint, so a later change is looked at again (and skipped again).
            out.append(replace(record, unchanged=True, fingerprint=None, exists_already=True))
        else:
            out.append(record)
    return out
