"""Reading a stream's source table or view: its columns, the horizon, batches and rows by key.

Configured names (source schema, table, columns) always go through
``psycopg.sql.Identifier``. Reads never lock source rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from include.crm_export.config import ANY_TIME_ZONE, ChangeColumn, Lookup, Stream, change_column
from include.crm_export.db.connection import dict_rows, one_row, one_value
from include.crm_export.decisions import Lag
from include.crm_export.errors import StreamConfigError
from include.crm_export.mapping import RECORD_KEY, marked_deleted
from include.crm_export.names import POSTGRES_CONN_ID

log = logging.getLogger(__name__)

# Backends that never write user rows: their transactions (a long autovacuum)
# must not hold the export back. Every other kind (client sessions, background
# workers such as pg_cron's or logical replication's, parallel workers) counts.
_NOT_WRITERS = [
    "autovacuum launcher",
    "autovacuum worker",
    "archiver",
    "background writer",
    "checkpointer",
    "logger",
    "startup",
    "walreceiver",
    "walsender",
    "walwriter",
]
# Keep horizon samples this long: a prepared transaction older than that freezes the export (see below).
_SAMPLE_DAYS = 7
# The most western UTC offset in use (UTC-12): "any" writer zone.
_WESTMOST_ZONE = "Etc/GMT+12"


@dataclass(frozen=True)
class Horizon:
    """Rows whose change value is below ``at`` are all committed (see README, "Late rows").

    ``at`` is in the change column's own terms (an instant, a local time or a
    date); None means nothing may be read (a prepared transaction of unknown age).
    """

    at: datetime | date | None
    bound: datetime  # the instant (UTC) no writer still open can have started before
    held_back_by: dict[str, Any] | None  # the old transaction that holds it back, if any


def _table(stream: Stream) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(stream.source_schema), sql.Identifier(stream.source_table))


def _columns(names: tuple[str, ...]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(c) for c in names)


def _selected(stream: Stream) -> sql.Composed:
    """The stream's columns, and the key's text form as the record key."""
    return sql.SQL("{columns}, {key}::text AS {record_key}").format(
        columns=_columns(stream.source_columns), key=sql.Identifier(stream.key), record_key=sql.Identifier(RECORD_KEY)
    )


def _key_in(stream: Stream, column_types: dict[str, str]) -> sql.Composed:
    """``key = ANY(%s)`` with the record keys cast back to the key's own type, so the key's index serves it."""
    return sql.SQL("{key} = ANY(CAST(%s AS {key_type}[]))").format(
        key=sql.Identifier(stream.key), key_type=sql.SQL(column_types[stream.key])
    )


def column_types(conn: psycopg.Connection, stream: Stream) -> dict[str, str]:
    """The source's column types; fails naming the stream and column when something is missing."""
    regclass = f'"{stream.source_schema}"."{stream.source_table}"'
    if one_value(conn.execute("SELECT to_regclass(%s)", (regclass,))) is None:
        raise StreamConfigError(
            f"Stream config error in stream '{stream.name}', field 'source': table or view {stream.source} "
            f"does not exist in the {POSTGRES_CONN_ID} database (or this user cannot see it)."
        )
    rows = conn.execute(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, c.relkind
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
           WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped""",
        (regclass,),
    ).fetchall()
    types = {name: kind for name, kind, _not_null, _relkind in rows}
    nullable = {name for name, _kind, not_null, relkind in rows if not not_null and relkind in ("r", "p", "f")}
    where_used = {stream.key: "key", stream.external_id_column: "external_id.column"}
    where_used.update({column: "order_by" for column in stream.order_by})
    where_used.update({column: f"fields.{sf_field}" for sf_field, column in stream.fields})
    if stream.deletes_column is not None:
        where_used.setdefault(stream.deletes_column, "deletes.column")
    for column in stream.source_columns:
        if column not in types:
            raise StreamConfigError(
                f"Stream config error in stream '{stream.name}', field '{where_used[column]}': "
                f"{stream.source} has no column '{column}'."
            )
    for column in (stream.key, *stream.order_by):
        if column in nullable:
            raise StreamConfigError(
                f"Stream config error in stream '{stream.name}', field '{where_used[column]}': column '{column}' of "
                f"{stream.source} allows NULL, and a row with NULL there has no place in the export's order: it "
                f"would never be exported. Make it NOT NULL (ALTER TABLE {stream.source} ALTER COLUMN {column} SET "
                "NOT NULL), or export a view that fills it (for example COALESCE(updated_at, created_at))."
            )
    _check_deletes_column(stream, types, {name for name, _kind, not_null, _relkind in rows if not_null})
    for lookup in stream.lookups:
        if lookup.parent is not None:
            _check_lookup_type(conn, stream, lookup, types[lookup.column])
    if stream.logical:
        return types  # no change column: the stream follows the table's commit order
    change = change_column(stream, types[stream.order_by[0]])
    for zone in change.writer_time_zones:
        if zone != ANY_TIME_ZONE and not one_value(
            conn.execute("SELECT %s IN (SELECT name FROM pg_timezone_names)", (zone,))
        ):
            raise StreamConfigError(
                f"Stream config error in stream '{stream.name}', field 'change_stamp.writer_time_zones': "
                f"PostgreSQL does not know the time zone {zone!r} (see pg_timezone_names, e.g. UTC, Europe/Berlin)."
            )
    return types


def _check_deletes_column(stream: Stream, types: dict[str, str], never_null: set[str]) -> None:
    deletes = stream.deletes_column
    if deletes is not None and types[deletes] != "boolean" and deletes in never_null:
        raise StreamConfigError(
            f"Stream config error in stream '{stream.name}', field 'deletes.column': column '{deletes}' of "
            f"{stream.source} is {types[deletes]} and never NULL, so every row would count as deleted (a row is "
            "deleted when the column is not NULL, or true for a boolean column). Name the column that is set "
            "only when a row is deleted, for example deleted_at."
        )


# Types whose values print alike: a child's key in one finds the parent's in the other by its text.
_TEXT_KINDS = {"smallint": "integer", "integer": "integer", "bigint": "integer", "text": "text"}
_TEXT_KINDS.update({"character varying": "text", "citext": "text", "uuid": "uuid"})


def _text_kind(type_name: str) -> str:
    return _TEXT_KINDS.get(type_name.split("(")[0].strip(), type_name)


def _check_lookup_type(conn: psycopg.Connection, stream: Stream, lookup: Lookup, child_type: str) -> None:
    """A lookup finds its parent by the text each stream sends ("17" from a bigint; "17.00" from a numeric(12,2),
    "17 " from a char(3)): a child column whose values print differently from the parent's external id would
    never find its parent. Same kind (integers, text) or integers or uuids against text pass; anything else must
    match."""
    parent = lookup.parent
    assert parent is not None
    parent_type = one_value(
        conn.execute(
            """SELECT format_type(atttypid, atttypmod) FROM pg_attribute
               WHERE attrelid = to_regclass(%s) AND attname = %s AND NOT attisdropped""",
            (f'"{parent.source_schema}"."{parent.source_table}"', parent.external_id_column),
        )
    )
    if parent_type is None:
        return  # the parent's own run names what is missing in its source
    kinds = {_text_kind(child_type), _text_kind(parent_type)}
    if len(kinds) == 1 or kinds in ({"integer", "text"}, {"uuid", "text"}):
        return
    raise StreamConfigError(
        f"Stream config error in stream '{stream.name}', field 'fields.{lookup.field}': its column "
        f"{stream.source}.{lookup.column} is {child_type}, while stream '{parent.name}' sends its external id from "
        f"{parent.source}.{parent.external_id_column}, {parent_type}. A child finds its parent by the text both "
        "send, and these types print the same value differently (17.00, 17.0 and 17 are three external ids), so "
        f"no child would find its parent. Export a view that casts {lookup.column} to {parent_type} (or change "
        "one of the columns)."
    )


def rows_without_a_place(conn: psycopg.Connection, stream: Stream) -> str | None:
    """The key of a row whose order columns hold NULL, if any (views: their columns cannot be declared NOT NULL).

    Such a row has no place in the order and would never be read; the export
    refuses to pass over it silently. A scan of the view, once per run.
    """
    query = sql.SQL("SELECT {key}::text FROM {table} WHERE {nulls} LIMIT 1").format(
        key=sql.Identifier(stream.key),
        table=_table(stream),
        nulls=sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(sql.Identifier(c)) for c in stream.order_by),
    )
    row = conn.execute(query).fetchone()
    return row[0] if row else None


def is_view(conn: psycopg.Connection, stream: Stream) -> bool:
    regclass = f'"{stream.source_schema}"."{stream.source_table}"'
    return bool(
        one_value(conn.execute("SELECT relkind IN ('v', 'm') FROM pg_class WHERE oid = to_regclass(%s)", (regclass,)))
    )


def export_horizon(
    conn: psycopg.Connection,
    stream: Stream,
    change: ChangeColumn,
    *,
    exclude_backends: tuple[int, ...] = (),
) -> Horizon:
    """How far the export may read: now minus the settle window, and never past a writer still open.

    A transaction still in flight may yet commit rows whose change value is its
    start time (less the column's margin); reading past that could skip them
    for good. Writers are every backend of the database that may write rows
    (sessions of any role, background workers) and prepared transactions,
    whose start is bounded by the horizons recorded before they were prepared.
    """
    row = one_row(
        conn.execute(
            """SELECT now() - make_interval(secs => %(settle)s) AS settled,
                  a.xact_start, a.pid, a.application_name, a.state, a.usename, a.backend_type,
                  p.gid, p.prepared, p.owner,
                  (SELECT max(bound) FROM crm_export.horizon_samples WHERE taken_at <= p.prepared) AS prepared_floor
           FROM (SELECT 1) one
           LEFT JOIN LATERAL (
               SELECT xact_start, pid, application_name, state, usename, backend_type FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid <> ALL(%(own)s)
                 AND xact_start IS NOT NULL AND backend_type <> ALL(%(not_writers)s)
               ORDER BY xact_start LIMIT 1) a ON true
           LEFT JOIN LATERAL (
               SELECT gid, prepared, owner FROM pg_prepared_xacts
               WHERE database = current_database() ORDER BY prepared LIMIT 1) p ON true""",
            {"settle": stream.settle_seconds, "own": list(exclude_backends), "not_writers": _NOT_WRITERS},
        )
    )
    settled, oldest_start, pid, application, state, user, backend_type, gid, prepared, owner, prepared_floor = row
    bound, held_back_by = settled, None
    if oldest_start is not None and oldest_start < bound:
        bound = oldest_start
        held_back_by = {
            "kind": "transaction",
            "pid": pid,
            "application_name": application,
            "state": state,
            "user": user,
            "backend_type": backend_type,
            "since": oldest_start,
        }
    _record_sample(conn, stream, bound)
    if gid is not None and (prepared_floor is None or prepared_floor < bound):
        held_back_by = {"kind": "prepared", "gid": gid, "prepared": prepared, "owner": owner, "since": prepared_floor}
        if prepared_floor is None:
            return Horizon(None, bound, held_back_by)
        bound = prepared_floor
    bound -= timedelta(seconds=change.margin_seconds)
    if change.kind == "timestamptz":
        return Horizon(bound, bound, held_back_by)
    local = local_horizon(conn, bound, change.writer_time_zones)
    return Horizon(local.date() if change.kind == "date" else local, bound, held_back_by)


def position_changed_since(conn: psycopg.Connection, stream: Stream, instant: datetime) -> list[str]:
    """The watermark (a prefix of ``order_by``) from which every row changed at or after ``instant`` is read.

    A ``timestamp`` (without time zone) or ``date`` column holds writers' local
    times: the instant becomes the lowest local time any of its
    ``writer_time_zones`` would stamp then, as for the export's horizon.
    """
    if stream.logical:
        raise StreamConfigError(
            f"Stream '{stream.name}' is capture: logical: its rows have no change time to re-position from. "
            "Re-position it from the start (a read of the whole table, then the slot's changes)."
        )
    change = change_column(stream, column_types(conn, stream)[stream.order_by[0]])
    if change.kind == "timestamptz":
        return [instant.isoformat()]
    local = local_horizon(conn, instant, change.writer_time_zones)
    return [(local.date() if change.kind == "date" else local).isoformat()]


def local_horizon(conn: psycopg.Connection, bound: datetime, zones: tuple[str, ...]) -> datetime:
    """The lowest local time any writer in ``zones`` can stamp at or after the instant ``bound``.

    Around a daylight-saving change local clocks jump back, so each zone's
    smallest UTC offset within a day either side of ``bound`` is used.
    """
    names = [_WESTMOST_ZONE if zone == ANY_TIME_ZONE else zone for zone in zones]
    lowest: datetime = one_value(
        conn.execute(
            """SELECT min((%(bound)s::timestamptz AT TIME ZONE 'UTC') + least(
                       ((%(bound)s::timestamptz - interval '1 day') AT TIME ZONE z)
                           - ((%(bound)s::timestamptz - interval '1 day') AT TIME ZONE 'UTC'),
                       (%(bound)s::timestamptz AT TIME ZONE z) - (%(bound)s::timestamptz AT TIME ZONE 'UTC'),
                       ((%(bound)s::timestamptz + interval '1 day') AT TIME ZONE z)
                           - ((%(bound)s::timestamptz + interval '1 day') AT TIME ZONE 'UTC')))
           FROM unnest(%(zones)s::text[]) z""",
            {"bound": bound, "zones": names},
        )
    )
    return lowest


def _record_sample(conn: psycopg.Connection, stream: Stream, bound: datetime) -> None:
    """Remember the bound: a transaction prepared later started no earlier than it."""
    conn.execute(
        """WITH pruned AS (DELETE FROM crm_export.horizon_samples
                           WHERE taken_at < now() - make_interval(days => %(days)s))
           INSERT INTO crm_export.horizon_samples (stream, taken_at, bound) VALUES (%(stream)s, now(), %(bound)s)""",
        {"days": _SAMPLE_DAYS, "stream": stream.name, "bound": bound},
    )


def activity_blind_spot(conn: psycopg.Connection) -> str | None:
    """Why this user cannot see every writer in pg_stat_activity, if it cannot; the remedy included."""
    tracking, privileged, user = one_row(
        conn.execute(
            """SELECT current_setting('track_activities')::bool,
                  pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')
                      OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                  current_user"""
        )
    )
    if not tracking:
        return (
            "track_activities is off, so PostgreSQL does not show when open transactions started: a row committed "
            "late may be skipped (only settle_seconds protects it). Turn track_activities on (the default)."
        )
    if not privileged:
        return (
            f"The export's database user {user} cannot see when other roles' transactions started "
            "(pg_stat_activity hides them), so a row another role commits late may be skipped (only settle_seconds "
            f"protects it). Grant it: GRANT pg_read_all_stats TO {user};"
        )
    return None


def read_batch(
    conn: psycopg.Connection,
    stream: Stream,
    *,
    after: list[str] | None,
    horizon: datetime | date | None,
    column_types: dict[str, str],
    limit: int,
    until: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The next ``limit`` rows after ``after`` in the stream's order (keyset paging, never OFFSET), and at or
    before ``until`` when given (the rows of a Bulk API job being resumed)."""
    order = _columns(stream.order_by)
    if horizon is None:
        return []
    conditions = [sql.SQL("{} < %(horizon)s").format(sql.Identifier(stream.order_by[0]))]
    params: dict[str, Any] = {"horizon": horizon, "limit": limit}
    if after is not None:
        conditions.append(_after(stream, after, column_types, params))
    if until is not None:
        bound = []
        for index, column in enumerate(stream.order_by):
            params[f"u{index}"] = until[index]
            bound.append(sql.SQL("CAST({} AS {})").format(sql.Placeholder(f"u{index}"), sql.SQL(column_types[column])))
        conditions.append(sql.SQL("({}) <= ({})").format(order, sql.SQL(", ").join(bound)))
    query = sql.SQL("SELECT {columns} FROM {table} WHERE {where} ORDER BY {order} LIMIT %(limit)s").format(
        columns=_selected(stream),
        table=_table(stream),
        where=sql.SQL(" AND ").join(conditions),
        order=order,
    )
    return dict_rows(conn, query, params)


def read_after_key(
    conn: psycopg.Connection, stream: Stream, *, after: str | None, column_types: dict[str, str], limit: int
) -> list[dict[str, Any]]:
    """The next ``limit`` rows by key after the record key ``after`` (a capture stream's read of the whole
    table, keyset paging through the key's index)."""
    params: dict[str, Any] = {"limit": limit, "after": after}
    where = (
        sql.SQL("{key} > CAST(%(after)s AS {key_type})").format(
            key=sql.Identifier(stream.key), key_type=sql.SQL(column_types[stream.key])
        )
        if after is not None
        else sql.SQL("true")
    )
    query = sql.SQL("SELECT {columns} FROM {table} WHERE {where} ORDER BY {key} LIMIT %(limit)s").format(
        columns=_selected(stream), table=_table(stream), where=where, key=sql.Identifier(stream.key)
    )
    return dict_rows(conn, query, params)


def _after(stream: Stream, after: list[str], column_types: dict[str, str], params: dict[str, Any]) -> sql.Composed:
    """Rows after a position: a full position reads after it; a shorter one (a re-positioned stream:
    "changed at or after") reads from it."""
    columns = stream.order_by[: len(after)]
    placeholders = []
    for index, column in enumerate(columns):
        params[f"p{index}"] = after[index]
        placeholders.append(
            sql.SQL("CAST({} AS {})").format(sql.Placeholder(f"p{index}"), sql.SQL(column_types[column]))
        )
    compare = sql.SQL(">" if len(columns) == len(stream.order_by) else ">=")
    return sql.SQL("({}) {} ({})").format(_columns(columns), compare, sql.SQL(", ").join(placeholders))


# Counted exactly up to this many rows (an index range scan); beyond, the planner's estimate is given.
_LAG_EXACT_UP_TO = 100_000


def lag(conn: psycopg.Connection, stream: Stream, position: list[str] | None, column_types: dict[str, str]) -> Lag:
    """Rows waiting after ``position`` and the watermark's age: cheap at any table size."""
    params: dict[str, Any] = {"cap": _LAG_EXACT_UP_TO + 1}
    where = _after(stream, position, column_types, params) if position else sql.SQL("true")
    counted = one_value(
        conn.execute(
            sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {where} LIMIT %(cap)s) waiting").format(
                table=_table(stream), where=where
            ),
            params,
        )
    )
    rows, exact = counted, True
    if counted > _LAG_EXACT_UP_TO:
        with psycopg.ClientCursor(conn) as cursor:  # EXPLAIN takes its values inline
            plan = one_value(
                cursor.execute(
                    sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {table} WHERE {where}").format(
                        table=_table(stream), where=where
                    ),
                    {k: v for k, v in params.items() if k != "cap"},
                )
            )
        rows, exact = max(int(plan[0]["Plan"]["Plan Rows"]), counted), False
    age = None
    if (
        position
        and column_types[stream.order_by[0]].startswith("timestamp")
        and "with time zone" in (column_types[stream.order_by[0]])
    ):
        age = one_value(conn.execute("SELECT extract(epoch FROM now() - CAST(%s AS timestamptz))", (position[0],)))
        age = float(age)
    return Lag(rows, exact, age)


def all_rows(conn: psycopg.Connection, stream: Stream, column_types: dict[str, str]) -> Lag | None:
    """How many rows the source holds (what a re-position from the start sends again); None when they cannot be
    counted (the caller is saying something else already)."""
    try:
        return lag(conn, stream, None, column_types)
    except psycopg.Error as exc:
        log.warning("Could not count the rows of %s: %s", stream.source, exc)
        return None


def read_rows_by_key(
    conn: psycopg.Connection, stream: Stream, keys: list[str], column_types: dict[str, str]
) -> list[dict[str, Any]]:
    """Current source rows for ``keys`` (record keys: the key's text form), looked up through the key's index."""
    query = sql.SQL("SELECT {columns} FROM {table} WHERE {key_in}").format(
        columns=_selected(stream), table=_table(stream), key_in=_key_in(stream, column_types)
    )
    return dict_rows(conn, query, (keys,))


def positions_by_key(
    conn: psycopg.Connection, stream: Stream, keys: list[str], column_types: dict[str, str]
) -> dict[str, tuple[Any, ...]]:
    """The current order_by values of the given source rows (to see whether they changed)."""
    query = sql.SQL("SELECT {key}::text, {order} FROM {table} WHERE {key_in}").format(
        key=sql.Identifier(stream.key),
        order=_columns(stream.order_by),
        table=_table(stream),
        key_in=_key_in(stream, column_types),
    )
    return {row[0]: tuple(row[1:]) for row in conn.execute(query, (keys,)).fetchall()}


def keys_by_external_id(
    conn: psycopg.Connection, stream: Stream, external_id: str, column_types: dict[str, str]
) -> list[str]:
    """The record keys of the source rows whose external id is ``external_id``, as the stream sends it (its
    text form), in export order (a few at most). Compared in the column's own type first, so an index on it
    serves (the text form alone would read the whole table); a value that is no such type matches no row."""
    query = sql.SQL(
        "SELECT {key}::text FROM {table} WHERE {column} = CAST(CAST(%(value)s AS text) AS {type}) "
        "AND {column}::text = CAST(%(value)s AS text) "
        "ORDER BY {order} LIMIT 10"
    ).format(
        key=sql.Identifier(stream.key),
        table=_table(stream),
        column=sql.Identifier(stream.external_id_column),
        type=sql.SQL(column_types[stream.external_id_column]),
        order=_columns(stream.order_by),
    )
    try:
        with conn.transaction():  # a savepoint: a value the type refuses must not end the caller's transaction
            return [row[0] for row in conn.execute(query, {"value": external_id}).fetchall()]
    except psycopg.errors.DataError:
        return []


def live_holders(
    conn: psycopg.Connection, stream: Stream, external_ids: list[str], column_types: dict[str, str]
) -> dict[str, set[str]]:
    """Of these external ids (as the stream sends them), the record keys of the source rows that hold each now
    and are not marked deleted. Compared in the column's own type first, so an index on it serves."""
    select: list[sql.Composable] = [
        sql.SQL("{}::text").format(sql.Identifier(stream.external_id_column)),
        sql.SQL("{}::text").format(sql.Identifier(stream.key)),
    ]
    if stream.deletes_column is not None:
        select.append(sql.Identifier(stream.deletes_column))
    query = sql.SQL(
        "SELECT {select} FROM {table} WHERE {column} = ANY(CAST(%(values)s AS {type}[])) "
        "AND {column}::text = ANY(CAST(%(texts)s AS text[]))"
    ).format(
        select=sql.SQL(", ").join(select),
        table=_table(stream),
        column=sql.Identifier(stream.external_id_column),
        type=sql.SQL(column_types[stream.external_id_column]),
    )
    try:
        with conn.transaction():  # a savepoint: a value the type refuses must not end the caller's transaction
            rows = conn.execute(query, {"values": external_ids, "texts": external_ids}).fetchall()
    except psycopg.errors.DataError:  # one of them is no such value: look each up on its own
        rows = [
            (value, key, None)
            for value in external_ids
            for key in keys_by_external_id(conn, stream, value, column_types)
        ]
    holders: dict[str, set[str]] = {}
    for row in rows:
        if len(row) > 2 and marked_deleted(row[2]):
            continue
        holders.setdefault(row[0], set()).add(row[1])
    return holders


def is_after(
    conn: psycopg.Connection, stream: Stream, key: str, position: list[str] | None, column_types: dict[str, str]
) -> bool:
    """Does the source row ``key`` lie after ``position`` (not reached by a stream whose watermark it is)?"""
    if not position:
        return True
    params: dict[str, Any] = {"key": [key]}
    query = sql.SQL("SELECT {after} FROM {table} WHERE {key} = ANY(CAST(%(key)s AS {key_type}[]))").format(
        after=_after(stream, position, column_types, params),
        table=_table(stream),
        key=sql.Identifier(stream.key),
        key_type=sql.SQL(column_types[stream.key]),
    )
    row = conn.execute(query, params).fetchone()
    return bool(row and row[0])


def all_keys(conn: psycopg.Connection, stream: Stream) -> list[str]:
    """Every record key of the source (for comparisons, not for the export path)."""
    query = sql.SQL("SELECT {key}::text FROM {table}").format(key=sql.Identifier(stream.key), table=_table(stream))
    return [row[0] for row in conn.execute(query).fetchall()]
