"""The sObject Collections path: up to ``in_flight`` requests of ``batch_size`` records at once.

The next batch is read while requests run; a batch is sent when the level
allows (fewer while Salesforce struggles, ``concurrency.py``), none of its
records is in a running request, and the API budget has room. Answers are
committed strictly in source order (the head of the queue first), so the
watermark only ever moves to the end of the longest run of batches that are
all answered and committed. After a held record or a failed request nothing
more is sent and what is still in flight is not counted (upserts: sent again
by the next run).
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from include.crm_export.batch import MAX_RECORDS_PER_REQUEST, RecordOutcome, identities, next_request
from include.crm_export.concurrency import Concurrency
from include.crm_export.db import source
from include.crm_export.decisions import next_batch_size
from include.crm_export.export.paths import in_flight_already
from include.crm_export.export.session import ExportRun
from include.crm_export.fingerprints import to_send
from include.crm_export.mapping import SourceRecord, position_to_json

log = logging.getLogger(__name__)


@dataclass
class _Request:
    """One batch sent and not yet committed, in source order."""

    records: list[SourceRecord]
    keys: frozenset[str]
    answer: Future[list[RecordOutcome]]


class CollectionsPath:
    def __init__(
        self,
        run: ExportRun,
        concurrency: Concurrency,
        *,
        reads: ThreadPoolExecutor,
        pool: ThreadPoolExecutor,
    ) -> None:
        self.run = run
        self.concurrency = concurrency
        self.reads = reads
        self.pool = pool
        self.requests: deque[_Request] = deque()  # oldest first
        self.waiting: list[SourceRecord] | None = None  # read, not sent yet
        self.records_read = 0
        self.next_read: Future[tuple[source.Horizon, list[SourceRecord]]] | None = self._read_after(
            run.session.watermark.position
        )

    def _read_after(self, after: list[str] | None) -> Future[tuple[source.Horizon, list[SourceRecord]]]:
        limit = next_batch_size(self.run.stream, records_read=self.records_read)
        return self.reads.submit(self.run.session.read, after, limit, clock=self.run.clock)

    def resume(self) -> None:
        """Nothing to resume: a request a killed task left either landed (an upsert) or did not."""

    def _running(self) -> int:
        return sum(1 for request in self.requests if not request.answer.done())

    def _room(self) -> bool:
        # Answered but uncommitted batches wait for an older one; they are bounded too, so memory stays flat.
        return self._running() < self.concurrency.allowed and len(self.requests) < 2 * self.concurrency.ceiling

    def _a_request_failed(self) -> bool:
        return any(r.answer.done() and r.answer.exception() is not None for r in self.requests)

    def _request_full(self) -> bool:
        """Enough read for a full request: ``batch_size`` records to send (unchanged ones are not sent, so a
        request gathers them from as many reads as it takes, up to MAX_RECORDS_PER_REQUEST)."""
        waiting = self.waiting or []
        return len(waiting) >= MAX_RECORDS_PER_REQUEST or len(to_send(waiting)) >= self.run.stream.batch_size

    def read_next(self) -> None:
        """Take the next batch read (when there is room to send it) and start reading the one after."""
        if self._request_full() or self.next_read is None or not self._room() or self._a_request_failed():
            return
        horizon, records = self.next_read.result()
        self.next_read = None
        self.run.note_horizon(horizon)
        if not records:
            return
        self.records_read += len(records)
        if not self.run.limit_reached(self.records_read):
            self.next_read = self._read_after(position_to_json(records[-1].position))
        self.waiting = (self.waiting or []) + records

    def send_ready(self) -> None:
        """Send while the level allows (and nothing failed: what follows a failure is not sent): a full
        request, or what is left once nothing more is read."""
        while (
            self.waiting
            and (self._request_full() or self.next_read is None)
            and self._room()
            and not self._a_request_failed()
        ):
            records, rest = next_request(self.waiting, self.run.stream.batch_size)
            keys = identities(records)
            running = (r.keys for r in self.requests if not r.answer.done())
            if in_flight_already(keys, running):
                return
            if not to_send(records):  # all unchanged (or rejected by the mapping): confirmed without a request
                answer: Future[list[RecordOutcome]] = Future()
                answer.set_result(self.run.writer.send(records))
            elif self.run.over_budget(running=self._running()):
                self.waiting = None
                self._cancel_next_read()
                return
            else:
                self.run.writer.count_request()  # now, so the next budget check sees it
                answer = self.pool.submit(self.run.writer.send, records, counted=True)
                self.concurrency.sent()
            self.requests.append(_Request(records, keys, answer))
            self.waiting = rest or None
            self.read_next()

    def commit_answered(self) -> None:
        """Commit the answered batches at the head, in source order; a failed request raises here, after every
        batch before it is committed."""
        while self.requests and self.requests[0].answer.done() and not self.run.stopped:
            request = self.requests.popleft()
            self.run.commit_outcomes(request.answer.result())

    def wait(self) -> None:
        running = [r.answer for r in self.requests if not r.answer.done()]
        if running:
            wait(running, return_when=FIRST_COMPLETED)

    def finished(self) -> bool:
        return self.next_read is None and not self.requests and self.waiting is None

    def drop_in_flight(self, because: str, *, failed: bool = False) -> int:
        """Drop every request after a held record or a failed request: idempotent upserts, sent again later."""
        dropped = len(self.requests)
        wait([r.answer for r in self.requests])
        self.requests.clear()
        self.waiting = None
        self._cancel_next_read()
        if dropped:
            log.info("%d batch(es) in flight after %s are not counted; they are sent again later.", dropped, because)
        return dropped

    def _cancel_next_read(self) -> None:
        if self.next_read is not None:
            self.next_read.cancel()
            wait([self.next_read])
            self.next_read = None
