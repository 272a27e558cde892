"""Where fingerprints are kept: packed in buckets (``db/fingerprints.py``), each bucket changed by one statement.

Against the real PostgreSQL: what is written is found again exactly, a key
dropped leaves its bucket's other keys, a stream's drop leaves other
streams', and writers that share buckets never deadlock.
"""

from __future__ import annotations

import itertools
import threading

import psycopg

from include.crm_export.config import load_streams
from include.crm_export.db import fingerprints
from include.crm_export.db.fingerprints import _place
from include.crm_export.fingerprints import slot

STREAMS = load_streams()


def _same_bucket(number: int, how_many: int) -> list[str]:
    """Keys whose slots share one bucket (found by trying keys in turn)."""
    by_bucket: dict[int, list[str]] = {}
    for n in itertools.count():
        key = f"K-{n}"
        keys = by_bucket.setdefault(_place(slot(number, key))[0], [])
        keys.append(key)
        if len(keys) == how_many:
            return keys
    raise AssertionError("unreachable")


def _rows(db: psycopg.Connection) -> list[tuple[int, int]]:
    return db.execute("SELECT bucket, cardinality(suffixes) FROM crm_export.fingerprints ORDER BY bucket").fetchall()


def test_what_is_remembered_is_found_again_exactly_and_a_dropped_key_leaves_its_buckets_others(db):
    number = fingerprints.stream_number(db, STREAMS["contacts"])
    shared = _same_bucket(number, 3)
    spread = [f"S-{n}" for n in range(500)]
    written = {key: -(2**63) + i if i % 2 else 2**63 - 1 - i for i, key in enumerate([*shared, *spread])}
    fingerprints.settle(db, number, remember=written)
    assert fingerprints.confirmed(db, number, [*written, "never-sent"]) == written
    assert fingerprints.count(db) == len(written)
    assert (_place(slot(number, shared[0]))[0], 3) in _rows(db)  # three records, one row

    fingerprints.forget_keys(db, number, [shared[1], "never-sent"])
    fingerprints.settle(db, number, remember={shared[2]: 7, spread[0]: 8}, forget=[spread[0], spread[1]])
    expected = {**written, shared[2]: 7, spread[0]: 8}  # a key both dropped and remembered is remembered
    del expected[shared[1]], expected[spread[1]]
    assert fingerprints.confirmed(db, number, [*written]) == expected
    assert fingerprints.count(db) == len(expected)  # changed in place: no key twice


def test_dropping_keys_where_nothing_is_kept_writes_no_row(db):
    number = fingerprints.stream_number(db, STREAMS["contacts"])
    fingerprints.forget_keys(db, number, [f"R-{n}" for n in range(50)])
    assert _rows(db) == []


def test_a_streams_drop_leaves_the_other_streams_fingerprints(db):
    contacts, accounts = STREAMS["contacts"], STREAMS["accounts"]
    kept = {f"A-{n}": n for n in range(300)}
    fingerprints.settle(db, fingerprints.stream_number(db, accounts), remember=kept)
    fingerprints.settle(db, fingerprints.stream_number(db, contacts), remember={f"C-{n}": n for n in range(200)})
    assert fingerprints.forget(db, contacts) == 200
    assert fingerprints.count(db) == 300
    assert fingerprints.confirmed(db, fingerprints.stream_number(db, accounts), list(kept)) == kept


def test_writers_sharing_buckets_never_deadlock(db, project_conninfo):
    """Two writers of the same buckets at once, keys given in opposite orders (an export's commit and a
    re-export): each statement takes its rows in bucket order, so one waits for the other and both land."""
    number = fingerprints.stream_number(db, STREAMS["contacts"])
    keys = [f"D-{n}" for n in range(3000)]
    failures: list[BaseException] = []

    def write(order: list[str], value: int) -> None:
        try:
            with psycopg.connect(project_conninfo, autocommit=True) as conn:
                for round_ in range(10):
                    with conn.transaction():
                        fingerprints.settle(
                            conn, number, remember={key: value + round_ for key in order}, forget=order[:100]
                        )
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)

    writers = [threading.Thread(target=write, args=(keys, 100)), threading.Thread(target=write, args=(keys[::-1], 200))]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
    assert failures == []
    assert fingerprints.count(db) == len(keys)
    assert set(fingerprints.confirmed(db, number, keys).values()) <= {109, 209}
