"""Schema migrations: fresh install, upgrade in place with rows present, concurrency."""

from __future__ import annotations

import threading

import psycopg
import pytest

from include.crm_export.db.migrate import applied_versions, available_migrations, migrate

NEWEST = len(available_migrations())


def insert_error(conn, *, stream="contacts", record_key="1", status="open", resolved=False):
    conn.execute(
        """INSERT INTO crm_export."ExportErrors"
               (stream, sobject, record_key, external_id, error_code, error_message, error_fields, payload,
                status, resolved_at, resolved_by)
           VALUES (%s, 'Contact', %s, %s, 'FIELD_CUSTOM_VALIDATION_EXCEPTION', 'Email domain is blocked',
                   '{Email}', '{"LastName": "Lovelace"}', %s, CASE WHEN %s THEN now() END,
                   CASE WHEN %s THEN 'CRMExport' END)""",
        (stream, record_key, f"ext-{record_key}", status, resolved, resolved),
    )


def test_fresh_database_gets_every_migration_once(scratch_conn):
    assert migrate(scratch_conn) == list(range(1, NEWEST + 1))
    assert migrate(scratch_conn) == []
    assert applied_versions(scratch_conn) == list(range(1, NEWEST + 1))
    tables = {
        row[0]
        for row in scratch_conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'crm_export'"
        )
    }
    assert {"ExportErrors", "stream_watermarks", "schema_migrations"} <= tables


def test_upgrade_in_place_keeps_rows(scratch_conn):
    assert migrate(scratch_conn, target=1) == [1]
    with scratch_conn.transaction():
        insert_error(scratch_conn, record_key="1")
        insert_error(scratch_conn, record_key="2", status="resolved", resolved=True)
        scratch_conn.execute(
            "INSERT INTO crm_export.stream_watermarks (stream, position) VALUES ('contacts', '[\"2024-01-01\", \"7\"]')"
        )
    before = scratch_conn.execute(
        'SELECT id, record_key, status, last_failed_at FROM crm_export."ExportErrors" ORDER BY id'
    ).fetchall()

    assert migrate(scratch_conn) == list(range(2, NEWEST + 1))

    after = scratch_conn.execute(
        'SELECT id, record_key, status, last_failed_at, last_attempt_at FROM crm_export."ExportErrors" ORDER BY id'
    ).fetchall()
    assert [row[:4] for row in after] == before
    assert all(row[4] == row[3] for row in after)  # last_attempt_at backfilled from last_failed_at
    assert scratch_conn.execute("SELECT position FROM crm_export.stream_watermarks").fetchone()[0] == [
        "2024-01-01",
        "7",
    ]


def test_one_open_row_per_stream_and_record_is_enforced(scratch_conn):
    migrate(scratch_conn)
    with scratch_conn.transaction():
        insert_error(scratch_conn, record_key="1")
        insert_error(scratch_conn, record_key="1", status="resolved", resolved=True)
        insert_error(scratch_conn, stream="subscriptions", record_key="1")
    with pytest.raises(psycopg.errors.UniqueViolation), scratch_conn.transaction():
        insert_error(scratch_conn, record_key="1")


def test_status_and_resolution_must_agree(scratch_conn):
    migrate(scratch_conn)
    with pytest.raises(psycopg.errors.CheckViolation), scratch_conn.transaction():
        insert_error(scratch_conn, status="resolved", resolved=False)
    with pytest.raises(psycopg.errors.CheckViolation), scratch_conn.transaction():
        insert_error(scratch_conn, status="lost")


def test_concurrent_starts_migrate_once(scratch_database):
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(scratch_database) as conn:
                results.append(migrate(conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results, key=len) == [[], [], [], list(range(1, NEWEST + 1))]


def test_a_database_newer_than_the_code_is_refused(scratch_conn):
    migrate(scratch_conn)
    scratch_conn.execute("INSERT INTO crm_export.schema_migrations (version, name) VALUES (999, 'future')")
    scratch_conn.commit()
    with pytest.raises(RuntimeError, match="newer than this code"):
        migrate(scratch_conn)


def test_an_up_to_date_schema_needs_no_create_privilege(scratch_conn, scratch_database):
    """A DBA creates the schema once, then the export's user runs without CREATE anywhere."""
    migrate(scratch_conn)
    role = "crm_export_no_create"
    scratch_conn.execute(f"DROP ROLE IF EXISTS {role}")
    scratch_conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
    dbname = scratch_conn.info.dbname
    scratch_conn.execute(f"REVOKE CREATE ON DATABASE {dbname} FROM PUBLIC")
    scratch_conn.execute(f"GRANT CONNECT ON DATABASE {dbname} TO {role}")
    scratch_conn.execute(f"GRANT USAGE ON SCHEMA crm_export TO {role}")
    scratch_conn.execute(f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA crm_export TO {role}")
    scratch_conn.commit()
    info = scratch_conn.info
    try:
        with psycopg.connect(
            host=info.host, port=info.port, dbname=dbname, user=role, password="pw", autocommit=True
        ) as limited:
            assert migrate(limited) == []
            assert applied_versions(limited) == list(range(1, NEWEST + 1))
    finally:
        scratch_conn.execute(f"DROP OWNED BY {role}")
        scratch_conn.execute(f"DROP ROLE {role}")
        scratch_conn.commit()


def test_error_counts_follow_every_change_without_scanning_the_history(scratch_conn):
    from include.crm_export.db.export_errors import compact_error_counts
    from include.crm_export.db.page_queries import error_counts

    scratch_conn.autocommit = True
    migrate(scratch_conn)
    for key in ("1", "2", "3"):
        insert_error(scratch_conn, record_key=key)
    insert_error(scratch_conn, record_key="9", status="resolved", resolved=True)
    scratch_conn.execute(
        """UPDATE crm_export."ExportErrors" SET status = 'resolved', resolved_at = now() WHERE record_key = '1'"""
    )
    scratch_conn.execute(
        """UPDATE crm_export."ExportErrors" SET error_code = 'UNABLE_TO_LOCK_ROW' WHERE record_key = '2'"""
    )
    scratch_conn.execute("""DELETE FROM crm_export."ExportErrors" WHERE record_key = '3'""")

    def counts():
        return {(c["status"], c["error_code"]): c["count"] for c in error_counts(scratch_conn)}

    expected = {("open", "UNABLE_TO_LOCK_ROW"): 1, ("resolved", "FIELD_CUSTOM_VALIDATION_EXCEPTION"): 2}
    assert counts() == expected
    compact_error_counts(scratch_conn)
    assert counts() == expected
    assert scratch_conn.execute("SELECT count(*) FROM crm_export.export_error_count_deltas").fetchone()[0] == 2
    scratch_conn.execute('TRUNCATE crm_export."ExportErrors"')
    assert counts() == {}
