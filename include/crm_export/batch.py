"""What a batch's results mean for the watermark and ExportErrors. Pure: no I/O.

The invariant these functions keep: every source row at or below a stream's
watermark is confirmed in Salesforce or has an open ExportErrors row.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from include.crm_export.errors import RejectedRecord
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

    @property
    def exported(self) -> int:
        return len(self.confirmed_keys)


def plan_batch(outcomes: list[RecordOutcome], *, pause_on_error: bool) -> BatchPlan:
    if not outcomes:
        return BatchPlan(None, (), (), None)
    if pause_on_error:
        for index, outcome in enumerate(outcomes):
            if outcome.rejection is not None:
                before = outcomes[:index]
                return BatchPlan(
                    new_position=before[-1].record.position if before else None,
                    confirmed_keys=tuple(o.record.key for o in before),
                    rejected=((outcome.record, outcome.rejection),),
                    held=(outcome.record, outcome.rejection),
                )
    return BatchPlan(
        new_position=outcomes[-1].record.position,
        confirmed_keys=tuple(o.record.key for o in outcomes if o.rejection is None),
        rejected=tuple((o.record, o.rejection) for o in outcomes if o.rejection is not None),
        held=None,
    )


@dataclass
class RunTally:
    """Counts for the closing summary of a run."""

    batches: int = 0
    exported: int = 0
    errors_by_code: Counter[str] = field(default_factory=Counter)

    def add(self, plan: BatchPlan) -> None:
        self.batches += 1
        self.exported += plan.exported
        for _, rejection in plan.rejected:
            self.errors_by_code[rejection.code] += 1

    @property
    def errors(self) -> int:
        return sum(self.errors_by_code.values())

    def errors_text(self) -> str:
        return ", ".join(f"{code}: {n}" for code, n in self.errors_by_code.most_common()) or "none"
