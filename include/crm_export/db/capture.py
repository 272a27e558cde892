"""Change capture through logical decoding (``capture: logical``): the stream's publication and replication slot,
and the move of the slot's changes into ``crm_export.captured_changes``.

- ``capture setup`` checks the server (``wal_level``), the role (replication)
  and the table (a table, whose replica identity carries the key and the
  external id), then creates the publication ``crm_export_<stream>`` of the
  table and the slot ``crm_export_<stream>`` (plugin ``pgoutput``).
- Each run first moves what the slot holds into the change table, in commit
  order, keys only, and then advances the slot: the slot, and the WAL the
  server keeps for it, lags at most one run, also while the stream is held.
  A move is peeked, committed, then the slot advanced; a run killed in
  between peeks the same changes again, which the change table already has.
- The slot's position is recorded with each move. A slot found past it was
  consumed or made anew by someone else: what happened in between may be
  lost, so the stream stops and says how to start over.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql

from include.crm_export.config import RunLimits, Stream, stream_definition
from include.crm_export.db import source
from include.crm_export.db.connection import one_row, one_value
from include.crm_export.errors import StreamConfigError
from include.crm_export.names import SCHEMA
from include.crm_export.pgoutput import DELETE, TRUNCATE, UPSERT, Change, Decoder, lsn_text, lsn_value
from include.crm_export.quoting import sql_identifier

log = logging.getLogger(__name__)

CHANGES = sql.Identifier(SCHEMA, "captured_changes")
SLOTS = sql.Identifier(SCHEMA, "capture_slots")
# Messages a peek returns at most (it finishes the transaction it is in): a move takes as many peeks as it needs.
PEEK_MESSAGES = 20_000
# Changes decoded, then written to the change table, at a time.
MOVE_CHUNK = 10_000

# Where each platform sets wal_level and grants replication (checked 2026-12):
# - Amazon RDS / Aurora PostgreSQL, "Performing logical replication for Amazon RDS for PostgreSQL":
#   https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/PostgreSQL.Concepts.General.FeatureSupport.LogicalReplication.html
# - Google Cloud SQL, "Set up logical replication and decoding":
#   https://cloud.google.com/sql/docs/postgres/replication/configure-logical-replication
# - Azure Database for PostgreSQL flexible server, "Logical replication and logical decoding":
#   https://learn.microsoft.com/azure/postgresql/flexible-server/concepts-logical
_WAL_LEVEL_HELP = (
    "Set it to logical and restart the server: on your own server ALTER SYSTEM SET wal_level = logical (or "
    "postgresql.conf); on Amazon RDS or Aurora set rds.logical_replication = 1 in the DB parameter group and "
    "reboot; on Google Cloud SQL set the database flag cloudsql.logical_decoding = on; on Azure Database for "
    "PostgreSQL flexible server set the server parameter wal_level to LOGICAL and restart."
)


def _replication_help(role: str) -> str:
    quoted = sql_identifier(role)
    return (
        f"Give role {role} the right to use replication slots: ALTER ROLE {quoted} WITH REPLICATION (your own "
        f"server, Google Cloud SQL, Azure Database for PostgreSQL); on Amazon RDS or Aurora GRANT rds_replication "
        f"TO {quoted}."
    )


def slot_name(stream: Stream) -> str:
    """The stream's replication slot and publication: ``crm_export_<stream>`` (stream names are lower_snake)."""
    return f"crm_export_{stream.name}"[:63]


@dataclass(frozen=True)
class CapturedChange:
    """A row of the change table: one row change, in commit order."""

    commit_lsn: str
    seq: int
    record_key: str
    operation: str  # pgoutput.UPSERT, DELETE or TRUNCATE
    external_id: str | None  # of a delete, as the deleted row had it
    xid: int | None = None  # of its transaction

    @property
    def position(self) -> tuple[str, str, str]:
        return ("changes", self.commit_lsn, str(self.seq))


def _fail(stream: Stream, problem: str) -> StreamConfigError:
    return StreamConfigError(f"Change capture of stream '{stream.name}' ({stream.source}): {problem}")


def check_server(conn: psycopg.Connection, stream: Stream) -> None:
    """wal_level is logical, and the role may use replication slots; else a message saying what to change."""
    level = one_value(conn.execute("SHOW wal_level"))
    if level != "logical":
        raise _fail(stream, f"the server's wal_level is {level}, and logical decoding needs logical. {_WAL_LEVEL_HELP}")
    role, allowed = one_row(
        conn.execute(
            """SELECT current_user, rolsuper OR rolreplication
                      OR EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = 'rds_replication'
                                 AND pg_has_role(current_user, r.oid, 'member'))
               FROM pg_roles WHERE rolname = current_user"""
        )
    )
    if not allowed:
        raise _fail(stream, f"role {role} may not use replication slots. {_replication_help(role)}")


def _identity_columns(conn: psycopg.Connection, stream: Stream) -> tuple[str, set[str]]:
    """The table's kind of replica identity (d, n, f, i) and the columns a delete carries."""
    regclass = f'"{stream.source_schema}"."{stream.source_table}"'
    row = conn.execute("SELECT relkind, relreplident FROM pg_class WHERE oid = to_regclass(%s)", (regclass,)).fetchone()
    if row is None:
        raise _fail(stream, f"table {stream.source} does not exist (or this role cannot see it).")
    relkind, identity = row
    if relkind == "p":
        raise _fail(
            stream,
            f"{stream.source} is a partitioned table; capture follows plain tables only for now (its changes "
            "arrive under each partition's name, and each partition has its own replica identity). Use a "
            "timestamp stream (order_by), or capture each partition as a stream of its own.",
        )
    generated = one_value(
        conn.execute(
            "SELECT attgenerated <> '' FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s",
            (regclass, stream.external_id_column),
        )
    )
    if generated:
        raise _fail(
            stream,
            f"the external id column {stream.external_id_column} is a generated column, which logical decoding "
            "does not carry, so a deleted row's change would not say its external id. Use a stored column.",
        )
    if relkind != "r":
        raise _fail(
            stream,
            f"{stream.source} is not a table (a view or another relation); logical decoding follows tables only. "
            "Capture the table the view reads, or use a timestamp stream (order_by).",
        )
    if identity == "f":
        return "f", {stream.key, stream.external_id_column}
    if identity == "n":
        return "n", set()
    flag = "indisprimary" if identity == "d" else "indisreplident"
    columns = conn.execute(
        sql.SQL(
            """SELECT a.attname FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
               WHERE i.indrelid = to_regclass(%s) AND i.{}"""
        ).format(sql.Identifier(flag)),
        (regclass,),
    ).fetchall()
    return identity, {column for (column,) in columns}


def check_table(conn: psycopg.Connection, stream: Stream) -> None:
    """The table's replica identity carries the key and the external id: a deleted row is gone, and what its
    delete carries is all there is to find its Salesforce record by (its external id) and its ExportErrors row by
    (its key). Without a replica identity the server would refuse the table's updates once it is published."""
    identity, carried = _identity_columns(conn, stream)
    missing = [column for column in dict.fromkeys((stream.key, stream.external_id_column)) if column not in carried]
    if not missing:
        return
    why = (
        "it has no replica identity (REPLICA IDENTITY NOTHING, or no primary key), so once it is published the "
        "server would refuse its UPDATEs and DELETEs"
        if identity == "n" or not carried
        else f"a deleted row's change carries only its replica identity ({', '.join(sorted(carried))}), not "
        f"{', '.join(missing)}, so the export could not find the deleted row's Salesforce record"
    )
    raise _fail(
        stream,
        f"{why}. Run ALTER TABLE {stream.source} REPLICA IDENTITY FULL (deletes then carry the whole old row; "
        "updates and deletes write more WAL), or make the key the external id column, then run capture setup again.",
    )


def setup(conn: psycopg.Connection, stream: Stream) -> str:
    """Create the stream's publication and slot (each only if missing); what was done, for the person."""
    if not stream.logical:
        raise _fail(stream, "the stream is not capture: logical in the stream file; set it there first.")
    check_server(conn, stream)
    check_table(conn, stream)
    name = slot_name(stream)
    done = []
    try:
        with conn.transaction():
            if one_value(conn.execute("SELECT count(*) FROM pg_publication WHERE pubname = %s", (name,))) == 0:
                conn.execute(
                    sql.SQL("CREATE PUBLICATION {} FOR TABLE {}.{}").format(
                        sql.Identifier(name), sql.Identifier(stream.source_schema), sql.Identifier(stream.source_table)
                    )
                )
                done.append(f"created publication {name} of {stream.source}")
        existing = conn.execute(
            "SELECT plugin, database FROM pg_replication_slots WHERE slot_name = %s", (name,)
        ).fetchone()
        if existing is None:
            from include.crm_export.db import watermarks  # it starts capture streams over through this module

            # A new slot starts the stream over (a read of the whole table, then the slot's changes): a watermark
            # in an older slot's changes would skip what happened in between.
            watermarks.reposition(
                conn,
                stream,
                definition=stream_definition(stream, source.column_types(conn, stream)),
                from_change_time=None,
                by="capture setup",
                reason=f"new replication slot {name}: the stream starts over with a read of the whole table",
            )
            with conn.transaction():
                created = one_value(
                    conn.execute("SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))
                )
                _record_slot(conn, stream, created)
            done.append(f"created replication slot {name} at {created}")
        elif existing[0] != "pgoutput" or existing[1] != one_value(conn.execute("SELECT current_database()")):
            raise _fail(
                stream,
                f"a replication slot {name} exists already (plugin {existing[0]}, database {existing[1]}), not this "
                "stream's: slot names are shared by every database of the server. Drop it if it is a leftover "
                "(SELECT pg_drop_replication_slot(...)), or rename the stream.",
            )
        else:
            done.append(f"replication slot {name} exists already")
    except psycopg.errors.InsufficientPrivilege as exc:
        role = one_value(conn.execute("SELECT current_user"))
        raise _fail(
            stream,
            f"PostgreSQL refused: {str(exc).strip()}. Creating a publication needs ownership of the table (run "
            f"capture setup as its owner once, or ALTER TABLE {stream.source} OWNER TO {role}). "
            f"{_replication_help(role)}",
        ) from None
    return "; ".join(done) + (
        ". The stream starts with a read of the whole table, then follows the slot in commit order."
    )


def _record_slot(conn: psycopg.Connection, stream: Stream, lsn: str) -> None:
    """Note a slot made anew: its changes start at ``lsn``, and the stream starts over with a read of the table, so
    no change of an older slot is left."""
    conn.execute(
        sql.SQL(
            """INSERT INTO {} (stream, slot_name, moved_upto) VALUES (%s, %s, %s)
               ON CONFLICT (stream) DO UPDATE SET slot_name = EXCLUDED.slot_name, moved_upto = EXCLUDED.moved_upto,
                                                  created_at = now()"""
        ).format(SLOTS),
        (stream.name, slot_name(stream), lsn),
    )
    conn.execute(sql.SQL("DELETE FROM {} WHERE stream = %s").format(CHANGES), (stream.name,))


def forget_for_start_over(conn: psycopg.Connection, stream: Stream) -> None:
    """A stream that starts over reads the whole table: the changes waiting are covered by that read, except
    deletes (a deleted row is not in it) and a truncate is left behind (the person chose to go on)."""
    conn.execute(sql.SQL("DELETE FROM {} WHERE stream = %s AND operation <> 'D'").format(CHANGES), (stream.name,))


def drop(conn: psycopg.Connection, stream: Stream) -> str:
    """Drop the stream's slot and publication (the server keeps no WAL for it any more), and its captured changes.
    A capture set up again starts over with a read of the whole table (the export sees the new slot)."""
    name = slot_name(stream)
    done = []
    if conn.execute(
        "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND database = current_database()", (name,)
    ).fetchone():
        conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
        done.append(f"dropped replication slot {name}")
    if conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone():
        conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)))
        done.append(f"dropped publication {name}")
    with conn.transaction():
        conn.execute(sql.SQL("DELETE FROM {} WHERE stream = %s").format(CHANGES), (stream.name,))
        conn.execute(sql.SQL("DELETE FROM {} WHERE stream = %s").format(SLOTS), (stream.name,))
    return "; ".join(done) or f"stream '{stream.name}' had no slot or publication"


def check_slot(conn: psycopg.Connection, stream: Stream) -> None:
    """The stream's slot is where the export left it; a missing slot or one someone else moved stops the stream."""
    name = slot_name(stream)
    known = conn.execute(
        sql.SQL("SELECT moved_upto::text FROM {} WHERE stream = %s").format(SLOTS), (stream.name,)
    ).fetchone()
    slot = conn.execute(
        """SELECT confirmed_flush_lsn::text, wal_status FROM pg_replication_slots
           WHERE slot_name = %s AND database = current_database()""",
        (name,),
    ).fetchone()
    setup_command = f"python -m include.crm_export capture setup --stream {stream.name}"
    if known is None or slot is None:
        raise _fail(
            stream,
            f"its replication slot {name} {'is not set up' if known is None else 'is gone'}. Run {setup_command} "
            "(the stream then starts over with a read of the whole table).",
        )
    if slot[1] == "lost" or lsn_value(slot[0]) > lsn_value(known[0]):
        raise _fail(
            stream,
            f"its replication slot {name} is at {slot[0]}, past {known[0]} where the export left it"
            f"{' (the server removed WAL it still needed: wal_status lost)' if slot[1] == 'lost' else ''}: someone "
            "else consumed it or made it anew, and changes in between may be lost. Start over: "
            f"python -m include.crm_export capture drop --stream {stream.name}, then {setup_command}.",
        )


def move_changes(conn: psycopg.Connection, stream: Stream, key_type: str) -> int:
    """Move every change the slot holds, committed before now, into the change table, then advance the slot past
    them: how many row changes were moved. Runs outside any transaction of the caller's."""
    check_slot(conn, stream)
    name = slot_name(stream)
    # The flushed end of the WAL, not its write position: decoding reads only flushed WAL, so a commit between
    # the two (synchronous_commit off, a bulk load) would be passed over by an advance to the write position.
    # Every transaction that committed before this point is in what the peeks return.
    upto = one_value(conn.execute("SELECT pg_current_wal_flush_lsn()::text"))
    moved = 0
    while True:
        decoder = Decoder()
        messages = 0
        with conn.transaction():
            # Read through a server-side cursor and written as it goes: a peek ends only at a commit, so one
            # transaction of millions of rows (a nightly rewrite) is one peek, and must not be held in memory.
            with conn.cursor(name=f"crm_export_peek_{stream.name}") as peek:
                peek.itersize = MOVE_CHUNK
                peek.execute(
                    """SELECT data FROM pg_logical_slot_peek_binary_changes(
                           %s, %s::pg_lsn, %s, 'proto_version', '1', 'publication_names', %s)""",
                    (name, upto, PEEK_MESSAGES, name),
                )
                changes: list[Change] = []
                for (data,) in peek:
                    messages += 1
                    changes += decoder.feed(bytes(data))
                    if len(changes) >= MOVE_CHUNK:
                        moved += _insert(conn, stream, changes, key_type)
                        changes = []
                moved += _insert(conn, stream, changes, key_type)
            done = messages < PEEK_MESSAGES or decoder.last_commit_end is None
            through = upto if done else lsn_text(decoder.last_commit_end or 0)
            conn.execute(
                sql.SQL("UPDATE {} SET moved_upto = GREATEST(moved_upto, %s::pg_lsn) WHERE stream = %s").format(SLOTS),
                (through, stream.name),
            )
        conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (name, through))
        if done:
            return moved


def _insert(conn: psycopg.Connection, stream: Stream, changes: list[Change], key_type: str) -> int:
    """The changes as change-table rows. A key is stored as ``key::text`` prints it, the record key everywhere
    else (pgoutput prints some types otherwise: a char(n) with its padding, an inet without its /32)."""
    rows = [row for change in changes for row in _rows(stream, change)]
    if rows:
        with conn.cursor() as cursor:
            cursor.executemany(
                sql.SQL(
                    """INSERT INTO {} (stream, commit_lsn, seq, record_key, operation, external_id, xid)
                       VALUES (%s, %s::pg_lsn, %s, COALESCE(CAST(CAST(NULLIF(%s, '') AS {}) AS text), ''), %s, %s,
                               %s)
                       ON CONFLICT DO NOTHING"""
                ).format(CHANGES, sql.SQL(key_type)),
                rows,
            )
    return len(rows)


def _rows(stream: Stream, change: Change) -> list[tuple[str, str, int, str, str, str | None, int]]:
    """A decoded change as change-table rows (stream, commit_lsn, seq, key, operation, external_id). An update
    that changed the key is the old key's delete, then the new key's upsert (seq * 2 and seq * 2 + 1 keep both
    in order)."""
    relation = change.relation
    if (relation.schema, relation.name) != (stream.source_schema, stream.source_table):
        return []
    lsn = lsn_text(change.commit_lsn)
    if change.operation == TRUNCATE:
        return [(stream.name, lsn, change.seq * 2, "", TRUNCATE, None, change.xid)]
    key = change.values.get(stream.key)
    if key is None:
        raise _fail(stream, f"a change at {lsn} carries no value of the key column {stream.key}.")
    if change.operation == DELETE:
        return [(stream.name, lsn, change.seq * 2, key, DELETE, _external_id(stream, change.values, key), change.xid)]
    rows = []
    old_key = change.old.get(stream.key) if change.old is not None else None
    old_external_id = _external_id(stream, change.old, old_key) if change.old is not None and old_key else None
    if old_key is not None and old_key != key and old_external_id != _external_id(stream, change.values, key):
        # The key changed, and with it the external id: the old one's record goes (a key change that keeps the
        # external id is the same Salesforce record, updated by the upsert).
        rows.append((stream.name, lsn, change.seq * 2, old_key, DELETE, old_external_id, change.xid))
    rows.append((stream.name, lsn, change.seq * 2 + 1, key, UPSERT, None, change.xid))
    return rows


def _external_id(stream: Stream, old: dict[str, str | None], key: str) -> str | None:
    return key if stream.external_id_column == stream.key else old.get(stream.external_id_column)


def read_changes(
    conn: psycopg.Connection, stream: Stream, after: tuple[str, str] | None, limit: int
) -> list[CapturedChange]:
    """The next ``limit`` changes after ``after`` (commit LSN, seq), in commit order."""
    where: sql.Composable = sql.SQL("stream = %(stream)s")
    params: dict[str, object] = {"stream": stream.name, "limit": limit}
    if after is not None:
        where = sql.SQL("{} AND (commit_lsn, seq) > (%(lsn)s::pg_lsn, %(seq)s::int)").format(where)
        params.update(lsn=after[0], seq=after[1])
    rows = conn.execute(
        sql.SQL(
            """SELECT commit_lsn::text, seq, record_key, operation, external_id, xid FROM {} WHERE {}
               ORDER BY commit_lsn, seq LIMIT %(limit)s"""
        ).format(CHANGES, where),
        params,
    ).fetchall()
    return [CapturedChange(lsn, seq, key, str(operation), ext, xid) for lsn, seq, key, operation, ext, xid in rows]


def still_ending(conn: psycopg.Connection, xids: set[int]) -> set[int]:
    """Of these transactions, those that committed but are not visible to other sessions yet: they still hold
    their transaction id lock (a commit waiting for a synchronous standby is decoded before it is visible, so
    reading its rows then would read their older versions)."""
    if not xids:
        return set()
    rows = conn.execute(
        """SELECT DISTINCT transactionid::text::bigint FROM pg_locks
           WHERE locktype = 'transactionid' AND transactionid::text::bigint = ANY(%s)""",
        (sorted(xids),),
    ).fetchall()
    return {int(xid) for (xid,) in rows}


def forget_exported(conn: psycopg.Connection, stream: Stream, upto: tuple[str, str]) -> int:
    """Drop the changes at or below the watermark: exported (or open in ExportErrors)."""
    return conn.execute(
        sql.SQL("DELETE FROM {} WHERE stream = %s AND (commit_lsn, seq) <= (%s::pg_lsn, %s::int)").format(CHANGES),
        (stream.name, upto[0], upto[1]),
    ).rowcount


def waiting_changes(conn: psycopg.Connection, stream: Stream, after: tuple[str, str] | None) -> int:
    where: sql.Composable = sql.SQL("stream = %s")
    params: list[object] = [stream.name]
    if after is not None:
        where = sql.SQL("{} AND (commit_lsn, seq) > (%s::pg_lsn, %s::int)").format(where)
        params += [after[0], after[1]]
    return int(one_value(conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(CHANGES, where), params)))


def wal_limit_bytes(slot: str, streams: list[Stream]) -> int:
    """Retained WAL past which a slot is flagged and notified: the ``alert_retained_wal_mb`` of the stream that
    follows it, or for a slot no stream follows, the smallest any stream sets (the default with no stream)."""
    following = [stream for stream in streams if stream.logical and slot_name(stream) == slot]
    megabytes = [stream.alert_retained_wal_mb for stream in following or streams]
    return int(1_000_000 * min(megabytes, default=RunLimits().alert_retained_wal_mb))


def slots(conn: psycopg.Connection, streams: list[Stream], *, only: str | None = None) -> list[dict[str, object]]:
    """The crm-export slots of this database (``only``: that one, if it exists): name, the stream following it
    (None: none does), the WAL kept for it, whether that is past :func:`wal_limit_bytes`, and whether the server
    removed WAL it still needed (``wal_status`` lost: its changes can no longer be read)."""
    owners = {slot_name(stream): stream.name for stream in streams if stream.logical}
    rows = conn.execute(
        r"""SELECT slot_name::text, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, active,
                   wal_status IS NOT DISTINCT FROM 'lost'
            FROM pg_replication_slots
            WHERE database = current_database() AND slot_name LIKE 'crm\_export\_%%'
              AND (%(only)s::text IS NULL OR slot_name = %(only)s)
            ORDER BY slot_name""",
        {"only": only},
    ).fetchall()
    listed = []
    for name, retained, active, lost in rows:
        limit = wal_limit_bytes(name, streams)
        listed.append(
            {
                "slot": name,
                "stream": owners.get(name),
                "retained_wal_bytes": int(retained or 0),
                "limit_bytes": limit,
                "too_much": int(retained or 0) > limit,
                "lost": bool(lost),
                "active": bool(active),
            }
        )
    return listed


def retained_wal_bytes(conn: psycopg.Connection, stream: Stream) -> int | None:
    """How much WAL the server keeps for the stream's slot (None: no slot)."""
    value = one_value(
        conn.execute(
            """SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
               FROM pg_replication_slots WHERE slot_name = %s""",
            (slot_name(stream),),
        )
    )
    return None if value is None else int(value)
