"""Late rows on every kind of change column the stream file accepts (README, "Late rows").

Each scenario holds a writer transaction open across an export run, commits
other rows meanwhile whose change values lie above the late row's, and checks
that the late row reaches Salesforce once it commits: the watermark never
passes a row that can still appear below it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.support.helpers import salesforce_contacts, table_stream, watermark, write_streams

ZONE = "America/New_York"


def late_stream(**change_stamp) -> dict:
    extra = {"change_stamp": change_stamp} if change_stamp else {}
    return table_stream("crm_test.late", key="id", change="changed", **extra)


def make_table(db, column: str) -> None:
    db.execute("CREATE SCHEMA crm_test")
    db.execute(
        f"""CREATE TABLE crm_test.late (id bigint PRIMARY KEY, ext text NOT NULL, last_name text NOT NULL,
                                        changed {column})"""
    )


def insert(conn, ids, changed_sql: str = "DEFAULT", params=()) -> None:
    for i in ids:
        conn.execute(
            f"INSERT INTO crm_test.late (id, ext, last_name, changed) VALUES (%s, %s, %s, {changed_sql})",
            (i, str(i), f"L{i}", *params),
        )


def exported(emulator) -> set[int]:
    return {int(k) for k in salesforce_contacts(emulator)}


def test_timestamp_without_time_zone_written_in_another_zone(db, emulator, run_dag, project_conninfo, tmp_path):
    make_table(db, "timestamp NOT NULL DEFAULT now()")  # the writer's session zone decides the value
    streams = write_streams(tmp_path / "s.yml", {"contacts": late_stream(writer_time_zones=[ZONE])})
    with psycopg.connect(project_conninfo, autocommit=True) as early:
        early.execute(f"SET TimeZone = '{ZONE}'")
        insert(early, range(1, 6), "now() - interval '1 hour'")
    with psycopg.connect(project_conninfo) as slow:
        slow.execute(f"SET TimeZone = '{ZONE}'")
        insert(slow, [100])  # stamped with its transaction's start, in New York time
        time.sleep(0.2)
        with psycopg.connect(project_conninfo, autocommit=True) as quick:
            quick.execute(f"SET TimeZone = '{ZONE}'")
            insert(quick, range(6, 11))  # committed, and stamped above the late row
        first = run_dag(streams_file=streams)
        assert first.state == "success"
        assert exported(emulator) == {1, 2, 3, 4, 5}
        assert "may still commit rows with older change timestamps" in first.log
        slow.commit()
    assert run_dag(streams_file=streams).state == "success"
    assert exported(emulator) == {*range(1, 11), 100}


def test_timestamp_without_time_zone_needs_its_writers_zone(db, emulator, run_dag, tmp_path):
    make_table(db, "timestamp NOT NULL DEFAULT now()")
    insert(db, [1])
    run = run_dag(streams_file=write_streams(tmp_path / "s.yml", {"contacts": late_stream()}), retries=False)
    assert run.task_states["export_contacts"] == "failed"
    assert "field 'change_stamp.writer_time_zones'" in run.log
    assert "Use timestamptz, or name the zone(s)" in run.log
    assert exported(emulator) == set()


def test_a_zone_postgresql_does_not_know_is_refused(db, emulator, run_dag, tmp_path):
    make_table(db, "timestamp NOT NULL DEFAULT now()")
    streams = write_streams(tmp_path / "s.yml", {"contacts": late_stream(writer_time_zones=["Mars/Olympus"])})
    run = run_dag(streams_file=streams, retries=False)
    assert run.task_states["export_contacts"] == "failed"
    assert "PostgreSQL does not know the time zone 'Mars/Olympus'" in run.log


def test_timestamptz_with_millisecond_precision(db, emulator, run_dag, project_conninfo, tmp_path):
    make_table(db, "timestamptz(3) NOT NULL DEFAULT now()")
    streams = write_streams(tmp_path / "s.yml", {"contacts": late_stream()})
    insert(db, range(1, 6), "now() - interval '1 hour'")
    with psycopg.connect(project_conninfo) as slow:
        insert(slow, [100])
        time.sleep(0.2)
        insert(db, range(6, 11))
        assert run_dag(streams_file=streams).state == "success"
        assert 100 not in exported(emulator)
        slow.commit()
    assert run_dag(streams_file=streams).state == "success"
    assert exported(emulator) == {*range(1, 11), 100}


def test_timestamps_set_by_the_application(db, emulator, run_dag, project_conninfo, tmp_path):
    """An ORM stamps the row before its transaction begins, so the value lies below the transaction's start."""
    make_table(db, "timestamptz NOT NULL")
    streams = write_streams(tmp_path / "s.yml", {"contacts": late_stream(set_by="application", lead_seconds=5)})
    insert(db, range(1, 6), "%s", (datetime.now(UTC) - timedelta(hours=1),))
    stamped = datetime.now(UTC) - timedelta(seconds=2)  # computed by the application, then BEGIN
    with psycopg.connect(project_conninfo) as slow:
        insert(slow, [100], "%s", (stamped,))
        insert(db, range(6, 11), "%s", (stamped + timedelta(seconds=1),))  # committed, stamped above it
        assert run_dag(streams_file=streams).state == "success"
        assert exported(emulator) == {1, 2, 3, 4, 5}
        slow.commit()
    time.sleep(5)  # the rows were stamped within the lead window of now; past it they are read
    assert run_dag(streams_file=streams).state == "success"
    assert exported(emulator) == {*range(1, 11), 100}


def test_date_change_column_exports_a_day_once_it_is_over(db, emulator, run_dag, tmp_path):
    make_table(db, "date NOT NULL DEFAULT current_date")
    streams = write_streams(tmp_path / "s.yml", {"contacts": late_stream(writer_time_zones=["UTC"])})
    insert(db, [1, 2], "current_date - 3")
    insert(db, [3])  # today: rows may still be stamped with today's date, so none of today's are read yet
    assert run_dag(streams_file=streams).state == "success"
    assert exported(emulator) == {1, 2}
    assert watermark(db)[0][1] == "2"


@pytest.mark.parametrize(
    ("zone", "instants"),
    [
        ("America/New_York", ("2026-10-31T12:00:00Z", "2026-11-02T12:00:00Z")),  # clocks go back 1 h
        ("America/New_York", ("2026-03-07T12:00:00Z", "2026-03-09T12:00:00Z")),  # clocks go forward
        ("Australia/Lord_Howe", ("2026-04-04T00:00:00Z", "2026-04-06T00:00:00Z")),  # back 30 minutes
        ("any", ("2026-06-01T00:00:00Z", "2026-06-02T00:00:00Z")),
    ],
)
def test_local_horizon_never_passes_a_local_time_still_to_be_stamped(db, zone, instants):
    """Across a daylight-saving change: every local time stamped at or after an instant is at or above its horizon."""
    from include.crm_export.db.source import local_horizon

    start, end = (datetime.fromisoformat(i) for i in instants)
    steps = [start + timedelta(minutes=10 * n) for n in range(int((end - start).total_seconds() // 600) + 1)]
    zones = ["Etc/GMT-14", "Etc/GMT+12"] if zone == "any" else [zone]
    stamps = [
        min(db.execute("SELECT %s::timestamptz AT TIME ZONE %s", (t, z)).fetchone()[0] for z in zones) for t in steps
    ]
    horizons = [local_horizon(db, t, (zone,)) for t in steps]
    for index, horizon in enumerate(horizons):
        assert horizon <= min(stamps[index:]), (steps[index], horizon, min(stamps[index:]))
    assert horizons == sorted(horizons)  # it never moves back


def test_a_prepared_transaction_holds_the_export_back_until_it_is_finished(
    db, emulator, run_dag, project_conninfo, tmp_path
):
    make_table(db, "timestamptz NOT NULL DEFAULT now()")
    streams = write_streams(tmp_path / "s.yml", {"contacts": late_stream()})
    insert(db, range(1, 6), "now() - interval '1 hour'")
    assert run_dag(streams_file=streams).state == "success"  # records where the horizon stood
    assert exported(emulator) == set(range(1, 6))
    gid = "crm-test-late-row"
    with psycopg.connect(project_conninfo) as writer:
        insert(writer, [100])
        writer.execute(f"PREPARE TRANSACTION '{gid}'")  # the session may now go; the transaction stays
    try:
        time.sleep(0.2)
        insert(db, range(6, 11))
        held = run_dag(streams_file=streams)
        assert held.state == "success"
        assert exported(emulator) == set(range(1, 6))
        assert f"prepared transaction '{gid}'" in held.log
        assert f"COMMIT PREPARED '{gid}'" in held.log
    finally:
        db.execute(f"COMMIT PREPARED '{gid}'")
    assert run_dag(streams_file=streams).state == "success"
    assert exported(emulator) == {*range(1, 11), 100}


def test_a_prepared_transaction_of_unknown_age_freezes_the_export(db, emulator, run_dag, project_conninfo, tmp_path):
    make_table(db, "timestamptz NOT NULL DEFAULT now()")
    streams = write_streams(tmp_path / "s.yml", {"contacts": late_stream()})
    insert(db, range(1, 6), "now() - interval '1 hour'")
    db.execute("TRUNCATE crm_export.horizon_samples")  # prepared before crm-export ever looked
    gid = "crm-test-unknown-age"
    with psycopg.connect(project_conninfo) as writer:
        insert(writer, [100], "now() - interval '2 hours'")
        writer.execute(f"PREPARE TRANSACTION '{gid}'")
    try:
        frozen = run_dag(streams_file=streams)
        assert frozen.state == "success"
        assert exported(emulator) == set()
        assert "started at an unknown time" in frozen.log
    finally:
        db.execute(f"ROLLBACK PREPARED '{gid}'")
    assert run_dag(streams_file=streams).state == "success"
    assert exported(emulator) == set(range(1, 6))


@pytest.fixture
def export_role(db, project_conninfo, monkeypatch):
    """crm_export_postgres as a user of its own (not a superuser), as a deployment has it; yields a grant helper."""
    import json

    role = "crm_export_limited"
    if db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
        db.execute(f"DROP OWNED BY {role}")
        db.execute(f"DROP ROLE {role}")
    db.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'limited'")
    db.execute(f"GRANT USAGE ON SCHEMA crm_export, crm_test TO {role}")
    db.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA crm_export TO {role}")
    db.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA crm_test TO {role}")
    info = psycopg.conninfo.conninfo_to_dict(project_conninfo)
    connection = {
        "conn_type": "postgres",
        "host": info.get("host", "localhost"),
        "port": int(info.get("port", 5432)),
        "login": role,
        "password": "limited",
        "schema": info["dbname"],
    }
    monkeypatch.setenv("AIRFLOW_CONN_CRM_EXPORT_POSTGRES", json.dumps(connection))
    yield lambda: db.execute(f"GRANT pg_read_all_stats TO {role}")
    db.execute(f"DROP OWNED BY {role}")
    db.execute(f"DROP ROLE {role}")


def test_writers_of_other_roles_hold_the_export_back_once_it_may_see_them(
    db, emulator, run_dag, project_conninfo, tmp_path, request
):
    make_table(db, "timestamptz NOT NULL DEFAULT now()")
    grant = request.getfixturevalue("export_role")
    streams = write_streams(tmp_path / "s.yml", {"contacts": late_stream()})
    insert(db, range(1, 6), "now() - interval '1 hour'")

    blind = run_dag(streams_file=streams)
    assert blind.state == "success"
    assert "cannot see when other roles' transactions started" in blind.log
    assert "GRANT pg_read_all_stats TO crm_export_limited;" in blind.log

    grant()
    with psycopg.connect(project_conninfo) as other_role:  # the superuser: another role than the export's
        insert(other_role, [100])
        time.sleep(0.2)
        insert(db, range(6, 11))
        seeing = run_dag(streams_file=streams)
        assert "cannot see when other roles' transactions started" not in seeing.log
        assert exported(emulator) == set(range(1, 6))
        other_role.commit()
    assert run_dag(streams_file=streams).state == "success"
    assert exported(emulator) == {*range(1, 11), 100}
