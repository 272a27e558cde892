"""A child record whose parent Salesforce does not have: waiting for its parent, or wrong.

Salesforce refuses a record whose lookup names a parent by an external id no record has, with
``INVALID_FIELD`` and "Foreign key external ID: <value> not found for field <field> in entity <object>"
(the message Salesforce answers for a relationship field set by external id; "Relationship Fields in
Records", Bulk API 2.0 and Bulk API Developer Guide, describes the reference). What that refusal means for
us depends on the parent's own stream, and is decided here for every path (sObject Collections, Bulk API
2.0, the re-export):

- the parent stream holds that parent (an open ExportErrors row, or its hold), or is held before it: the
  child is **waiting for its parent**, code :data:`PARENT_NOT_EXPORTED`, a rejected record under the pause
  rules. Its message names the parent stream, the parent record and the parent's own error, so the person on
  call fixes the parent; the re-export sends the child again once the parent went through.
- the parent stream has not reached that parent yet (nothing wrong: written together, the parent after the
  parent stream's read, or that stream stopped by its per-run limits): the child **waits**
  (``RejectedRecord.waits``): the export stops before it for this run, with no ExportErrors row and no hold,
  and the next run, after the parent stream's, starts at it. Holding there (a red run) or logging it (a
  re-export a day later) would turn ordinary timing into an incident.
- no source row of the parent stream has that external id: an ordinary rejection (Salesforce's code), whose
  message names the missing parent key.
- the parent stream exported that parent, yet Salesforce has no such record (deleted in Salesforce): an
  ordinary rejection that says how to send the parent again.

A lookup to a parent exported elsewhere (``object:``/``external_id:``) is Salesforce's answer, as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from include.crm_export.config import Lookup, Stream
from include.crm_export.db import export_errors, source, watermarks
from include.crm_export.errors import PARENT_NOT_EXPORTED, RejectedRecord
from include.crm_export.quoting import one_line, shown

# A child waits this long at most for its parent stream to reach its parent (a few runs), then it is reported.
MAX_PARENT_WAIT = timedelta(hours=1)

_NOT_FOUND = re.compile(
    r"Foreign key external ID: (?P<value>.*) not found for field (?P<field>\w+) in entity (?P<object>\w+)", re.S
)


@dataclass(frozen=True)
class MissingParent:
    """The lookup whose parent Salesforce does not have, and the parent's external id as sent."""

    lookup: Lookup
    external_id: str


def missing_parent(stream: Stream, rejection: RejectedRecord) -> MissingParent | None:
    """The parent a rejection says Salesforce lacks, when it is one of this stream's lookups (else None)."""
    if not stream.lookups or rejection.code == PARENT_NOT_EXPORTED:
        return None
    found = _NOT_FOUND.search(rejection.message)
    if found is None:
        return None
    sobject, field = found["object"].lower(), found["field"].lower()
    for lookup in stream.lookups:
        if lookup.object.lower() == sobject and lookup.external_id_field.lower() == field:
            return MissingParent(lookup, found["value"])
    return None


class ParentCheck:
    """Explains rejections for missing parents against the parent streams' state (one check per parent and
    call: a batch of children of one held parent costs a few queries, not one per child)."""

    def __init__(self, conn: psycopg.Connection, stream: Stream) -> None:
        self.conn = conn
        self.stream = stream
        self._seen: dict[tuple[str, str], Callable[[RejectedRecord], RejectedRecord]] = {}
        self._column_types: dict[str, dict[str, str]] = {}
        self._waiting: tuple[str | None, datetime | None] | None = None  # the stream's, read once when needed

    def explain(self, rejection: RejectedRecord | None, record_key: str | None = None) -> RejectedRecord | None:
        """The rejection as the person on call needs it (unchanged unless it is a missing parent of ours).

        ``record_key``: the child's; a child that would wait, but has been the record its stream stops before
        for longer than :data:`MAX_PARENT_WAIT`, is reported as waiting for its parent instead (a rejected
        record under the pause rules): a parent its stream never reaches (a change time in the future, a
        stream stopped by its limits every run) must not stop the child stream in silence.
        """
        if rejection is None:
            return None
        missing = missing_parent(self.stream, rejection)
        if missing is None or missing.lookup.parent is None:
            return rejection
        seen = (missing.lookup.field, missing.external_id)
        if seen not in self._seen:
            self._seen[seen] = self._verdict(missing)
        explained = self._seen[seen](rejection)
        if explained.waits and record_key is not None:
            if self._waiting is None:
                self._waiting = watermarks.waiting(self.conn, self.stream)
            waiting_key, since = self._waiting
            if waiting_key == record_key and since is not None and datetime.now(UTC) - since > MAX_PARENT_WAIT:
                return RejectedRecord(
                    explained.code,
                    f"{explained.message} It has waited since {since:%Y-%m-%d %H:%M:%S %Z}, longer than a parent "
                    f"takes to arrive ({MAX_PARENT_WAIT.total_seconds() / 60:.0f} minutes): see why stream "
                    f"'{missing.lookup.parent.name}' does not reach it (its runs' stop reasons on the CRM Export "
                    "page; a change time in the future?).",
                    explained.fields,
                )
        return explained

    def _verdict(self, missing: MissingParent) -> Callable[[RejectedRecord], RejectedRecord]:
        lookup, value = missing.lookup, missing.external_id
        parent = lookup.parent
        assert parent is not None, "only lookups to one of our streams get here"
        named = f"{lookup.object}.{lookup.external_id_field} = {shown(value)}"
        if parent.name not in self._column_types:
            self._column_types[parent.name] = source.column_types(self.conn, parent)
        keys = source.keys_by_external_id(self.conn, parent, value, self._column_types[parent.name])
        if not keys:
            return _ordinary(
                lookup,
                f"No row of {parent.source} (stream '{parent.name}') has {parent.external_id_column} = "
                f"{shown(value)}, so the parent {named} this record points at does not exist: set "
                f"{lookup.column} of this row to an existing parent (or null), or add the parent row.",
            )
        key = keys[0]
        its_error = export_errors.open_rejection(self.conn, parent, key)
        watermark = watermarks.load_watermark(self.conn, parent)
        if its_error is not None or watermark.held_record_key == key:
            why = _its_error(its_error) if its_error is not None else "its stream is held at it"
            return _waiting(lookup, named, key, f"stream '{parent.name}' has not exported it: {why}")
        if source.is_after(self.conn, parent, key, watermark.position, self._column_types[parent.name]):
            held = watermark.held_record_key
            if held is not None:  # it waits behind the record its stream is held at
                held_error = export_errors.open_rejection(self.conn, parent, held)
                why = f" ({_its_error(held_error)})" if held_error is not None else ""
                return _waiting(
                    lookup, named, key, f"stream '{parent.name}' is held at its row {shown(held)}, before it{why}"
                )
            # Not exported yet, nothing wrong: its stream runs first and reaches it (next run at the latest).
            return _waiting(lookup, named, key, f"stream '{parent.name}' has not reached it yet", waits=True)
        return _ordinary(
            lookup,
            f"Stream '{parent.name}' exported its row {shown(key)} as {named}, but Salesforce has no such "
            f"{lookup.object} now (deleted or changed in Salesforce?). Send the parent again (python -m "
            f"include.crm_export send --stream {parent.name} --key {key}); this record goes through after it. "
            f"Other records of stream '{self.stream.name}' that Salesforce deleted with the parent are not sent "
            "again by themselves (unchanged since): re-position this stream to before them and run it with "
            "resend_all.",
        )


def _its_error(rejection: RejectedRecord) -> str:
    if rejection.code == PARENT_NOT_EXPORTED:  # the parent waits for its own parent: say so, not "rejected"
        return f"it waits in turn. {one_line(rejection.message)}"
    return f"Salesforce rejected it with {one_line(rejection.describe())}"


def _waiting(
    lookup: Lookup, named: str, key: str, why: str, *, waits: bool = False
) -> Callable[[RejectedRecord], RejectedRecord]:
    """``waits``: the parent comes by itself (its stream has not reached it): the export stops before this record
    for the run, with no error (``RejectedRecord.waits``); otherwise the parent needs a fix first."""
    parent = lookup.parent
    assert parent is not None
    then = (
        f"It goes through after stream '{parent.name}' exports that row (it runs first)."
        if waits
        else f"Fix the parent (this record is not at fault); it goes through once stream '{parent.name}' exports "
        "that row."
    )
    message = (
        f"Waiting for its parent: {lookup.field} points at {named}, row {shown(key)} of stream '{parent.name}', "
        f"which is not in Salesforce yet: {why}. {then}"
    )
    return lambda _rejection: RejectedRecord(PARENT_NOT_EXPORTED, message, (lookup.field,), waits=waits)


def _ordinary(lookup: Lookup, explanation: str) -> Callable[[RejectedRecord], RejectedRecord]:
    return lambda rejection: RejectedRecord(
        rejection.code, f"{rejection.message}. {explanation}", rejection.fields or (lookup.field,)
    )
