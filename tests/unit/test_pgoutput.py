"""The pgoutput decoder, on messages laid out as PostgreSQL's "Logical Replication Message Formats" describes
them (protocol version 1). The capture tests decode a real server's messages; these pin the layouts a busy
server sends that a test table rarely shows: a key change, an unchanged TOASTed value, a truncate, an origin."""

from __future__ import annotations

import struct

import pytest

from include.crm_export.pgoutput import DELETE, TRUNCATE, UPSERT, DecodeError, Decoder, lsn_text, lsn_value


def _s(text: str) -> bytes:
    return text.encode() + b"\x00"


def _tuple(*values: str | bytes | None) -> bytes:
    out = struct.pack("!h", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value == b"u":
            out += b"u"
        else:
            data = value.encode() if isinstance(value, str) else value
            out += b"t" + struct.pack("!i", len(data)) + data
    return out


BEGIN = b"B" + struct.pack("!qqi", 0x1_0000_0100, 0, 42)
COMMIT = b"C" + struct.pack("!bqqq", 0, 0x1_0000_0100, 0x1_0000_0180, 0)
RELATION = (
    b"R"
    + struct.pack("!i", 16384)
    + _s("crm")
    + _s("people")
    + b"f"
    + struct.pack("!h", 3)
    + b"\x01"
    + _s("id")
    + struct.pack("!ii", 20, -1)
    + b"\x00"
    + _s("ext")
    + struct.pack("!ii", 25, -1)
    + b"\x00"
    + _s("notes")
    + struct.pack("!ii", 25, -1)
)


def _feed(*messages: bytes):
    decoder = Decoder()
    changes = [change for message in messages for change in decoder.feed(message)]
    return decoder, changes


def test_inserts_updates_and_deletes_come_in_order_with_their_commit_position():
    insert = b"I" + struct.pack("!i", 16384) + b"N" + _tuple("1", "P-1", "hello")
    update = b"U" + struct.pack("!i", 16384) + b"N" + _tuple("1", "P-1", b"u")  # notes TOASTed, unchanged
    delete = b"D" + struct.pack("!i", 16384) + b"O" + _tuple("2", "P-2", None)
    decoder, changes = _feed(BEGIN, RELATION, insert, update, delete, COMMIT)

    assert [(c.operation, c.seq, c.values) for c in changes] == [
        (UPSERT, 1, {"id": "1", "ext": "P-1", "notes": "hello"}),
        (UPSERT, 2, {"id": "1", "ext": "P-1", "notes": None}),
        (DELETE, 3, {"id": "2", "ext": "P-2", "notes": None}),
    ]
    assert {c.commit_lsn for c in changes} == {0x1_0000_0100}
    assert decoder.last_commit_end == 0x1_0000_0180
    assert changes[0].relation.replica_identity == "f"


def test_an_update_that_changed_the_key_carries_the_old_key():
    update = b"U" + struct.pack("!i", 16384) + b"K" + _tuple("1", None, None) + b"N" + _tuple("9", "P-9", None)
    _, [change] = _feed(BEGIN, RELATION, update, COMMIT)
    assert change.old == {"id": "1", "ext": None, "notes": None}
    assert change.values["id"] == "9"


def test_a_truncate_names_its_tables_and_an_origin_is_passed_over():
    origin = b"O" + struct.pack("!q", 5) + _s("elsewhere")
    truncate = b"T" + struct.pack("!ib", 1, 0) + struct.pack("!i", 16384)
    _, [change] = _feed(BEGIN, origin, RELATION, truncate, COMMIT)
    assert (change.operation, change.relation.name) == (TRUNCATE, "people")


@pytest.mark.parametrize(
    ("messages", "says"),
    [
        ((BEGIN, b"I" + struct.pack("!i", 99) + b"N" + _tuple("1")), "before its Relation message"),
        ((RELATION, b"I" + struct.pack("!i", 16384) + b"N" + _tuple("1", "P-1", "x")), "outside a transaction"),
        ((BEGIN, RELATION, b"I" + struct.pack("!i", 16384) + b"N" + b"\x00\x03t\x00\x00\x00\x09ab"), "ends early"),
        ((b"Z",), "unknown message kind"),
    ],
)
def test_what_it_cannot_read_is_an_error_naming_why(messages, says):
    with pytest.raises(DecodeError, match=says):
        _feed(*messages)


def test_an_lsn_reads_and_prints_as_postgresql_prints_it():
    assert lsn_text(0x1_0000_0180) == "1/180"
    assert lsn_value("16/B374D848") == (0x16 << 32) | 0xB374D848
