"""What a delete's answer means, on every path. Pure: no I/O.

A source row marked deleted (the stream's ``deletes``) has its Salesforce
record deleted, found by the stream's external id: only records the export
itself writes carry it. Salesforce's answer per record:

- deleted: confirmed;
- already gone (``ENTITY_IS_DELETED``: in the Recycle Bin;
  ``INVALID_CROSS_REFERENCE_KEY``: no record has that Id any more, "Delete
  Records Using sObject Collections" and "Status Codes and Error Responses",
  REST API Developer Guide): confirmed as well, the source's wish holds;
- anything else (``DELETE_FAILED`` for a child record that blocks it,
  ``ENTITY_IS_LOCKED``, ``INSUFFICIENT_ACCESS_OR_READONLY`` …): a rejected
  record like any other, whose message says it was a delete.

A record Salesforce has no record for with that external id is gone already,
and counts as deleted without a request.
"""

from __future__ import annotations

from include.crm_export.config import Stream
from include.crm_export.errors import RejectedRecord
from include.crm_export.quoting import sentence, shown

ALREADY_GONE = frozenset({"ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY"})


def delete_refusal(stream: Stream, external_id: str | None, rejection: RejectedRecord) -> RejectedRecord | None:
    """What Salesforce's refusal to delete a record means: None when the record is gone already, else the
    rejected record, saying it was a delete and what the re-export does."""
    if rejection.code in ALREADY_GONE:
        return None
    why = f"is marked deleted ({stream.deletes_column})" if stream.deletes_column else ""
    if stream.logical:
        why = f"was deleted{' or ' + why if why else ''}"
    return RejectedRecord(
        rejection.code,
        f"Salesforce refused to delete the {stream.sobject} with {stream.external_id_field} = "
        f"{shown(external_id or '')}, whose source row {why}: "
        f"{sentence(rejection.message)} Fix what Salesforce names (a record that blocks the delete, a lock, the "
        "integration user's access); the re-export deletes it then, or upserts it if the row is no longer marked "
        "deleted.",
        rejection.fields,
    )
