"""What a batch's results mean for the watermark and ExportErrors. Pure: no I/O.

The invariant these functions keep: every source row at or below a stream's
watermark is confirmed in Salesforce or has an open ExportErrors row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from include.crm_export.errors import RejectedRecord
from include.crm_export.fingerprints import to_remember
from include.crm_export.mapping import SourceRecord


@dataclass(frozen=True)
class RecordOutcome:
    record: SourceRecord
    rejection: RejectedRecord | None  # None: confirmed in Salesforce


@dataclass(frozen=True)
class BatchPlan:
    """The state change one batch commits, in one transaction."""

    new_position: tuple[Any, ...] | None  # None: the watermark stays where it is
    confirmed_keys: tuple[str, ...]  # their open ExportErrors rows get resolved
    rejected: tuple[tuple[SourceRecord, RejectedRecord], ...]  # rejected records: open (or update) one row each
    held: tuple[SourceRecord, RejectedRecord] | None  # pause on: the record the stream stops at
    unchanged: int = 0  # of the confirmed: not sent, Salesforce holds their payload already
    fingerprints: dict[str, int] = field(default_factory=dict)  # by external id: of the records confirmed now
    waiting: tuple[SourceRecord, RejectedRecord] | None = None  # the record the run stops before (it waits)
    deleted: int = 0  # of the confirmed: deleted in Salesforce (or gone already), not unchanged
    existing: int = 0  # of the confirmed: not sent, Salesforce has them already (insert mode), not unchanged
    confirmed_ids: tuple[str, ...] = ()  # the confirmed records' external ids

    @property
    def exported(self) -> int:
        """Records Salesforce confirmed written in this batch (sent; the unchanged, deleted and existing are
        counted apart)."""
        return len(self.confirmed_keys) - self.unchanged - self.deleted - self.existing


def _confirmed(outcomes: list[RecordOutcome]) -> dict[str, Any]:
    """The confirmed records' part of a plan: their keys, how many were unchanged, deleted or in Salesforce
    already (insert mode), their fingerprints."""
    confirmed = [o.record for o in outcomes if o.rejection is None]
    return {
        "confirmed_keys": tuple(record.key for record in confirmed),
        "confirmed_ids": tuple(record.external_id for record in confirmed if record.external_id is not None),
        "unchanged": sum(1 for record in confirmed if record.unchanged and not record.exists_already),
        "existing": sum(1 for record in confirmed if record.exists_already),
        "deleted": sum(1 for record in confirmed if record.delete and not record.unchanged),
        "fingerprints": to_remember(confirmed),
    }


# A request carries at most batch_size records to send, and the unchanged records read between them
# (confirmed with it, in source order) up to this many records in all.
MAX_RECORDS_PER_REQUEST = 5_000


class Identified(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def external_id(self) -> str | None: ...


def identities(records: Iterable[Identified]) -> frozenset[str]:
    """What records in flight must not share with other records in flight: their keys, and the Salesforce
    records they write (external ids, as Salesforce matches them at the loosest: case-insensitively). Two
    requests or jobs sharing one never fly at once, so a delete and an upsert of one Salesforce record (a row
    deleted, another row taking its external id) land in source order."""
    out: set[str] = set()
    for record in records:
        out.add(record.key)
        if record.external_id:
            out.add("\x00external id:" + record.external_id.lower())
    return frozenset(out)


def next_request(records: list[SourceRecord], batch_size: int) -> tuple[list[SourceRecord], list[SourceRecord]]:
    """The records of the next request (source order; at most ``batch_size`` to send, at most
    :data:`MAX_RECORDS_PER_REQUEST` in all, each record once) and those left for the one after.

    A request gathers several reads, and a row changed between two reads is
    in both: its later version waits for the next request. So does a record
    sharing an external id with one before it in the request (:func:`identities`):
    a request upserts before it deletes.
    """
    sending = 0
    keys: set[str] = set()
    for index, record in enumerate(records):
        mine = identities([record])
        if index == MAX_RECORDS_PER_REQUEST or mine & keys:
            return records[:index], records[index:]
        keys |= mine
        if record.payload is not None and not record.unchanged:
            if sending == batch_size:
                return records[:index], records[index:]
            sending += 1
    return records, []


def plan_batch(outcomes: list[RecordOutcome], *, pause_on_error: bool) -> BatchPlan:
    """What a batch's outcomes commit. A record that waits (``RejectedRecord.waits``) ends the batch before it,
    whatever the pause: neither it nor anything after it is committed, so the watermark stays before it and the
    next run reads it again. A hold (pause on) before it comes first."""
    for index, outcome in enumerate(outcomes):
        if outcome.rejection is not None and outcome.rejection.waits:
            plan = plan_batch(outcomes[:index], pause_on_error=pause_on_error)
            return plan if plan.held is not None else replace(plan, waiting=(outcome.record, outcome.rejection))
    if not outcomes:
        return BatchPlan(None, (), (), None)
    if pause_on_error:
        for index, outcome in enumerate(outcomes):
            if outcome.rejection is not None:
                before = outcomes[:index]
                return BatchPlan(
                    new_position=before[-1].record.position if before else None,
                    rejected=((outcome.record, outcome.rejection),),
                    held=(outcome.record, outcome.rejection),
                    **_confirmed(before),
                )
    return BatchPlan(
        new_position=outcomes[-1].record.position,
        rejected=tuple((o.record, o.rejection) for o in outcomes if o.rejection is not None),
        held=None,
        **_confirmed(outcomes),
    )


@dataclass
class RunTally:
    """Counts for the closing summary of a run."""

    batches: int = 0
    exported: int = 0
    unchanged: int = 0  # confirmed without being sent: Salesforce held their payload already
    deleted: int = 0  # source rows marked deleted whose Salesforce record is deleted (or was gone already)
    existing: int = 0  # insert mode: not sent, Salesforce has them already
    errors_by_code: Counter[str] = field(default_factory=Counter)

    def add(self, plan: BatchPlan) -> None:
        self.batches += 1
        self.exported += plan.exported
        self.unchanged += plan.unchanged
        self.deleted += plan.deleted
        self.existing += plan.existing
        for _, rejection in plan.rejected:
            self.errors_by_code[rejection.code] += 1

    @property
    def errors(self) -> int:
        return sum(self.errors_by_code.values())

    def errors_text(self) -> str:
        return ", ".join(f"{code}: {n}" for code, n in self.errors_by_code.most_common()) or "none"
