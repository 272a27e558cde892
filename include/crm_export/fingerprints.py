"""What Salesforce last confirmed of each record, as a fingerprint: unchanged records are not sent. Pure: no I/O.

A record's fingerprint is a 64-bit hash of the exact payload Salesforce
confirmed (every field sent, its value digit for digit). A record read again
whose payload hashes the same is *unchanged*: Salesforce holds it already, so
it is not sent, and the watermark moves over it as over a sent record. A
fingerprint is written only with the commit that records its confirmation,
so a send that was never confirmed (a killed worker, a dropped request, a
rejection) leaves the one before it, and the record is sent again.

Before a record is sent, its fingerprint is dropped (committed at once): from
then until its answer is committed, what Salesforce holds is not known. A
rejected record's is dropped with the commit of its rejection, and the
re-export drops those of the records it sends. A row changed during a run
can be read again before its first read is committed; that commit then
drops the fingerprint instead of writing it (:class:`ReadsInFlight`).

A fingerprint hashes the payload's field names, sorted, and then the ``repr``
of its values in that order: exact for every value a payload holds
(``Decimal('1.10')`` is not ``Decimal('1.1')``, ``True`` is not ``1``, a
missing field is not a None), whatever order the fields were set in, and a
few times cheaper than JSON or sorting the payload's items, which matters
because every record read is hashed on the export's busiest thread (the
sorted order is worked out once per set of field names). A change of how a
payload prints (another Python, another version of this code) can only make
records look changed, so they are sent once more; it cannot make a changed
one look unchanged.

Where fingerprints are kept (``db/fingerprints.py``), a record has a 64-bit
*slot*: the stream's number in the high 16 bits, a hash of its external id as
Salesforce matches it below. Two keys sharing a slot only cost a send (the
later one's fingerprint answers for both, so the other looks changed); a
changed payload taken for unchanged needs two 64-bit hashes to agree.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from operator import itemgetter
from typing import Any

from include.crm_export.mapping import SourceRecord

_KEY_BITS = 48
MAX_STREAM_NUMBER = (1 << 16) - 1
_SIGNED = 1 << 63  # slots and fingerprints are stored as bigint: unsigned values shifted down, order kept


def _hash64(text: str, *, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=person).digest(), "big")


_ORDERS_KEPT = 1024  # sets of field names whose order is remembered: a stream has a few (on_null: keep, deletes)
_Values = Callable[[Mapping[str, Any]], tuple[Any, ...]]
_orders: dict[tuple[str, ...], tuple[str, _Values]] = {}


def _in_order(names: tuple[str, ...]) -> tuple[str, _Values]:
    """A payload's field names sorted, as text, and what takes its values in that order."""
    found = _orders.get(names)
    if found is None:
        ordered = sorted(names)
        take: _Values = itemgetter(*ordered) if len(ordered) > 1 else lambda payload: tuple(payload[n] for n in ordered)
        found = (repr(ordered), take)
        if len(_orders) >= _ORDERS_KEPT:
            _orders.clear()
        _orders[names] = found
    return found


def payload_fingerprint(payload: Mapping[str, Any], *, delete: bool = False) -> int:
    """The fingerprint of a payload as sent (field order does not matter, values do, exactly); ``delete``: of the
    record deleted, which no payload sent can hash to."""
    names, take = _in_order(tuple(payload))
    # The names' list literal ends where it ends, so no two payloads give the same text.
    text = names + repr(take(payload))
    return _hash64(text, person=b"crm-export-del" if delete else b"crm-export-fp") - _SIGNED


@functools.lru_cache(maxsize=32_768)  # a record's slot is asked when it is read and again when it is committed
def slot(stream_number: int, record_key: str) -> int:
    """Where a record's fingerprint is kept (``record_key``: its external id as Salesforce matches it)."""
    if not 0 <= stream_number <= MAX_STREAM_NUMBER:
        raise ValueError(f"stream number {stream_number} is out of range")
    return ((stream_number << _KEY_BITS) | (_hash64(record_key, person=b"crm-export-key") >> 16)) - _SIGNED


def stream_slots(stream_number: int) -> tuple[int, int]:
    """The slots of one stream: ``low <= slot <= high``."""
    return (stream_number << _KEY_BITS) - _SIGNED, ((stream_number + 1) << _KEY_BITS) - 1 - _SIGNED


def with_fingerprints(
    records: list[SourceRecord], confirmed: Mapping[str, int] | None, match_key: Callable[[str], str]
) -> list[SourceRecord]:
    """Each record with its payload's fingerprint, marked unchanged when Salesforce confirmed that payload last.

    ``confirmed``: the fingerprint Salesforce last confirmed, by external id
    as Salesforce matches it (``match_key``): a fingerprint describes the
    Salesforce record, whichever source row wrote it. None: send every
    record, unchanged or not, as ``--resend-all`` asks.
    """
    marked = []
    for record in records:
        if record.payload is None or record.external_id is None or record.unchanged:
            marked.append(record)  # nothing to send: rejected by the mapping, or covered by another record
            continue
        fingerprint = payload_fingerprint(record.payload, delete=record.delete)
        # None (--resend-all) or nothing confirmed (a first export): changed, with no key worked out.
        unchanged = confirmed.get(match_key(record.external_id)) == fingerprint if confirmed else False
        marked.append(record.looked_at(fingerprint, unchanged=unchanged))
    return marked


def to_send(records: list[SourceRecord]) -> list[SourceRecord]:
    """The records that go to Salesforce: neither unchanged nor rejected by the mapping."""
    return [record for record in records if record.payload is not None and not record.unchanged]


def to_forget_before_sending(
    records: list[SourceRecord], confirmed: Mapping[str, int], match_key: Callable[[str], str]
) -> list[str]:
    """The fingerprints to drop before these records are sent: once a request or job is out, whether Salesforce
    applied it is unknown until its answer is committed (a killed worker, a dropped request), so what was
    confirmed before no longer says what Salesforce holds."""
    if not confirmed:  # a first export: nothing to drop, and no key worth working out
        return []
    keys = {match_key(r.external_id) for r in to_send(records) if r.external_id is not None}
    return sorted(keys & set(confirmed))


def to_remember(records: list[SourceRecord]) -> dict[str, int]:
    """The fingerprints a commit writes, by external id: of the records Salesforce confirmed just now (not of
    unchanged ones, whose fingerprint is already the one written)."""
    return {
        r.external_id: r.fingerprint
        for r in records
        if r.fingerprint is not None and r.external_id is not None and not r.unchanged
    }


class ReadsInFlight:
    """The records a run has read and not yet committed, by external id as Salesforce matches it.

    A row changed during a run is read again, maybe before its first read is
    committed. The later read looks its fingerprint up before that commit
    writes it, so it would not drop it before being sent: were it written, a
    worker killed before the later read is committed would leave it standing
    for a payload Salesforce may no longer hold, and the row changed back to
    that payload would never be sent. So a commit writes the fingerprint of a
    record only if no later read of it is pending, and drops it otherwise; a
    read of a key whose fingerprint a commit is writing waits until that
    commit is in (milliseconds, and only then), so its lookup sees it.

    A run that starts with no fingerprint of its stream kept (a first export,
    after a re-position; ``none_kept_before``) looks up only keys it has
    written itself: nothing else writes one while it holds the stream's lock
    (another export waits for the lock, the re-export and a re-position only
    drop them). What it wrote is kept in a filter (:class:`_Written`) that can
    only answer "maybe" too often, never "no" wrongly.
    """

    def __init__(self, *, none_kept_before: bool = False) -> None:
        self._changed = threading.Condition()
        self._reads: Counter[str] = Counter()
        self._writing: frozenset[str] = frozenset()
        self._written = _Written() if none_kept_before else None

    def read(self, keys: Collection[str]) -> list[str]:
        """A read of records with these keys (a key once per record), before their fingerprints are looked up;
        the keys that may have one, to look up."""
        with self._changed:
            self._reads.update(keys)
            while not self._writing.isdisjoint(keys):
                self._changed.wait()
            written = self._written
            return list(keys) if written is None else [key for key in keys if written.may_hold(key)]

    @contextmanager
    def committing(
        self, remember: Mapping[str, int], settled: Iterable[str]
    ) -> Iterator[tuple[dict[str, int], list[str]]]:
        """What a commit writes of ``remember`` and what it drops instead (read again since), for the commit
        inside; once it is in, the records ``settled`` (every one it commits that was read with a payload) are
        pending no more."""
        try:
            with self._changed:  # decided and published at once: a read counted after this waits for the commit
                write = {key: value for key, value in remember.items() if self._reads[key] <= 1}
                read_again = [key for key in remember if key not in write]
                self._writing = frozenset(write)
                if self._written is not None:
                    for key in write:
                        self._written.add(key)
            yield write, read_again
        finally:
            with self._changed:
                self._done(settled)
                self._writing = frozenset()
                self._changed.notify_all()

    def not_taken(self, keys: Iterable[str]) -> None:
        """Records read and left to be read again (the rows after a full job): pending no more."""
        with self._changed:
            self._done(keys)

    def _done(self, keys: Iterable[str]) -> None:
        for key in keys:
            if self._reads[key] > 1:
                self._reads[key] -= 1
            else:
                self._reads.pop(key, None)


class _Written:
    """The keys a run wrote a fingerprint of, as a Bloom filter: 16 MB, four bits a key. It may say a key was
    written when it was not (one lookup more; about one key in a million after a million keys, one in three
    thousand after five million), never the other way round. Keys are hashed with Python's ``hash``, which is
    the same for a string throughout one process, all this filter lives in."""

    _BITS = 1 << 27
    _HASHES = 4

    def __init__(self) -> None:
        self._bits = bytearray(self._BITS // 8)

    def add(self, key: str) -> None:
        hashed = hash(key) & 0xFFFF_FFFF_FFFF_FFFF
        place, step, bits = hashed & 0xFFFF_FFFF, (hashed >> 32) | 1, self._bits
        for _ in range(self._HASHES):
            place &= self._BITS - 1
            bits[place >> 3] |= 1 << (place & 7)
            place += step

    def may_hold(self, key: str) -> bool:
        hashed = hash(key) & 0xFFFF_FFFF_FFFF_FFFF
        place, step, bits = hashed & 0xFFFF_FFFF, (hashed >> 32) | 1, self._bits
        for _ in range(self._HASHES):  # a key never written is mostly told by its first bit
            place &= self._BITS - 1
            if not bits[place >> 3] >> (place & 7) & 1:
                return False
            place += step
        return True
