"""PostgreSQL's logical replication messages (the ``pgoutput`` plugin, protocol version 1), decoded. Pure: no I/O.

A capture stream reads its slot with ``pg_logical_slot_peek_binary_changes``
(one message per row) and keeps, of each change, only what the export needs:
the row's key, whether it was deleted, and for a delete the external id the
old row had (when the table's replica identity carries it). Message layouts:
PostgreSQL documentation, "Logical Replication Message Formats" (section
55.9 in PostgreSQL 15): Begin ``B`` (final LSN, commit time, xid), Commit
``C``, Relation ``R`` (sent before the first change of a table in each
decoding session), Insert ``I``, Update ``U`` (an old tuple ``K``/``O`` when
the key changed or the replica identity is FULL), Delete ``D`` (``K``: the
replica identity's columns; ``O``: the whole old row), Truncate ``T``, and
Origin ``O`` and Type ``Y``, which carry nothing the export needs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

UPSERT = "U"  # inserted or updated: send the row's current version, read by key
DELETE = "D"  # deleted: delete its Salesforce record by external id
TRUNCATE = "T"  # the table was truncated: every row is gone at once

# A TupleData column: null, an unchanged TOASTed value (not sent), or text.
_NULL, _UNCHANGED_TOAST, _TEXT, _BINARY = b"n", b"u", b"t", b"b"


@dataclass(frozen=True)
class Relation:
    """A table as a Relation message describes it: its columns in order."""

    oid: int
    schema: str
    name: str
    columns: tuple[str, ...]
    replica_identity: str  # d (default: the primary key), n (nothing), f (full), i (an index)


@dataclass(frozen=True)
class Change:
    """One row change of a committed transaction, in commit order (``commit_lsn``, then ``seq`` within it)."""

    commit_lsn: int
    seq: int
    relation: Relation
    operation: str  # UPSERT, DELETE or TRUNCATE
    # The row's columns as text (None: NULL, or not carried: a TOASTed value left unchanged, or a column the
    # old tuple of a delete does not hold); for a TRUNCATE empty.
    values: dict[str, str | None]
    # Of an update: the old row as the replica identity carries it, sent when the key changed (or always, with
    # REPLICA IDENTITY FULL); None otherwise.
    old: dict[str, str | None] | None = None
    xid: int = 0  # of its transaction (Begin): decodable once committed, visible to others a moment later


class DecodeError(ValueError):
    """A message this decoder does not understand (a newer protocol, a corrupt stream)."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, size: int) -> bytes:
        if self.at + size > len(self.data):
            raise DecodeError(f"message ends early (wanted {size} bytes at {self.at} of {len(self.data)})")
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def int8(self) -> int:
        return int(self.take(1)[0])

    def int16(self) -> int:
        return int(struct.unpack("!h", self.take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack("!i", self.take(4))[0])

    def int64(self) -> int:
        return int(struct.unpack("!q", self.take(8))[0])

    def string(self) -> str:
        end = self.data.find(b"\x00", self.at)
        if end < 0:
            raise DecodeError("a string has no terminating NUL")
        text = self.data[self.at : end].decode("utf-8")
        self.at = end + 1
        return text

    def tuple(self, relation: Relation) -> dict[str, str | None]:
        count = self.int16()
        if count > len(relation.columns):
            raise DecodeError(f"a tuple of {count} columns for {relation.schema}.{relation.name}'s {relation.columns}")
        values: dict[str, str | None] = {}
        for column in relation.columns[:count]:
            kind = self.take(1)
            if kind in (_NULL, _UNCHANGED_TOAST):
                values[column] = None
            elif kind == _TEXT:
                values[column] = self.take(self.int32()).decode("utf-8")
            elif kind == _BINARY:
                raise DecodeError("binary tuple data: the slot is read without the binary option")
            else:
                raise DecodeError(f"unknown tuple column kind {kind!r}")
        return values


class Decoder:
    """Decodes one decoding session's messages in order; keeps the relations it has seen and the transaction it
    is in. Feed each message with :meth:`feed`; it returns the changes it carries (none for most)."""

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}
        self.commit_lsn: int | None = None  # of the transaction being read
        self.seq = 0
        self.last_commit_end: int | None = None  # the end LSN of the last transaction read whole
        self.xid = 0  # of the transaction being read

    def feed(self, data: bytes) -> list[Change]:
        reader = _Reader(data)
        kind = reader.take(1)
        if kind in (b"O", b"Y", b"M"):  # an origin, a type, a logical message: nothing the export needs
            return []
        handler = {
            b"B": self._begin,
            b"C": self._commit,
            b"R": self._relation_message,
            b"I": self._insert,
            b"U": self._update,
            b"D": self._delete,
            b"T": self._truncate,
        }.get(kind)
        if handler is None:
            raise DecodeError(f"unknown message kind {kind!r}")
        return handler(reader)

    def _begin(self, reader: _Reader) -> list[Change]:
        self.commit_lsn, self.seq = reader.int64(), 0
        reader.int64()  # the commit time
        self.xid = reader.int32() & 0xFFFFFFFF
        return []

    def _commit(self, reader: _Reader) -> list[Change]:
        reader.int8()  # flags
        reader.int64()  # the commit's LSN
        self.last_commit_end = reader.int64()  # the end of the commit record: where the next transaction starts
        self.commit_lsn = None
        return []

    def _relation_message(self, reader: _Reader) -> list[Change]:
        oid, schema, name = reader.int32(), reader.string(), reader.string()
        identity = chr(reader.int8())
        columns = []
        for _ in range(reader.int16()):
            reader.int8()  # flags: part of the key
            columns.append(reader.string())
            reader.int32()  # type oid
            reader.int32()  # type modifier
        self.relations[oid] = Relation(oid, schema, name, tuple(columns), identity)
        return []

    def _insert(self, reader: _Reader) -> list[Change]:
        relation = self._relation(reader.int32())
        if reader.take(1) != b"N":
            raise DecodeError("an Insert without its new tuple")
        return [self._change(relation, UPSERT, reader.tuple(relation))]

    def _update(self, reader: _Reader) -> list[Change]:
        relation = self._relation(reader.int32())
        marker = reader.take(1)
        old = None
        if marker in (b"K", b"O"):
            old = reader.tuple(relation)
            marker = reader.take(1)
        if marker != b"N":
            raise DecodeError("an Update without its new tuple")
        return [self._change(relation, UPSERT, reader.tuple(relation), old)]

    def _delete(self, reader: _Reader) -> list[Change]:
        relation = self._relation(reader.int32())
        if reader.take(1) not in (b"K", b"O"):
            raise DecodeError("a Delete without its old tuple")
        return [self._change(relation, DELETE, reader.tuple(relation))]

    def _truncate(self, reader: _Reader) -> list[Change]:
        count = reader.int32()
        reader.int8()  # options: CASCADE, RESTART IDENTITY
        return [self._change(self._relation(reader.int32()), TRUNCATE, {}) for _ in range(count)]

    def _relation(self, oid: int) -> Relation:
        relation = self.relations.get(oid)
        if relation is None:
            raise DecodeError(f"a change of relation {oid} before its Relation message")
        return relation

    def _change(
        self,
        relation: Relation,
        operation: str,
        values: dict[str, str | None],
        old: dict[str, str | None] | None = None,
    ) -> Change:
        if self.commit_lsn is None:
            raise DecodeError("a change outside a transaction (no Begin before it)")
        self.seq += 1
        return Change(self.commit_lsn, self.seq, relation, operation, values, old, self.xid)


def lsn_text(lsn: int) -> str:
    """An LSN as PostgreSQL prints it (``pg_lsn``): two hexadecimal halves."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_value(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)
