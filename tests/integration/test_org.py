"""A stream writes to the org of its own connection, and a watermark from one org never goes on in another.

A sandbox refresh gives the same URL a new org; a production connection pasted into a test deployment
points a stream elsewhere. Either way the stream's watermark is a position in what the old org holds: the
stream is refused, like a changed definition, until someone re-positions it on purpose.
"""

from __future__ import annotations

import json

from tests.support.helpers import (
    cli,
    contacts_stream,
    insert_contacts,
    open_errors,
    salesforce_contacts,
    watermark,
    write_streams,
)

FIRST_ORG, SECOND_ORG = "00D000000000001", "00D000000000002"


def stored_org(db, stream: str = "contacts") -> str | None:
    row = db.execute(
        "SELECT definition->>'org' FROM crm_export.stream_watermarks WHERE stream = %s", (stream,)
    ).fetchone()
    return row[0] if row else None


def test_a_watermark_from_one_org_is_refused_in_another_until_re_positioned(db, emulator, run_dag, tmp_path):
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    insert_contacts(db, 10)
    assert run_dag(streams_file=streams).state == "success"
    assert stored_org(db) == FIRST_ORG
    assert watermark(db)[0][1] == "10"

    emulator.set_org_id(SECOND_ORG + "AAA")  # a sandbox refresh: same URL, another org
    insert_contacts(db, 5, start=11, age="1 minute")
    run = run_dag(streams_file=streams, retries=False)
    assert run.task_states["export_contacts"] == "failed"
    assert f"its connection now reaches Salesforce org {SECOND_ORG}, not org {FIRST_ORG}" in run.log
    assert "nothing was sent" in run.log
    assert watermark(db)[0][1] == "10"
    assert len(salesforce_contacts(emulator)) == 10  # 11 to 15 were not sent to the other org
    assert open_errors(db) == []

    refused = cli("reexport", "--stream", "contacts", streams=streams)
    assert refused.returncode == 1
    assert "Nothing was re-exported." in refused.stderr
    assert SECOND_ORG in refused.stderr

    moved = cli("reposition", "--stream", "contacts", "--from-start", "--yes", "--reason", "refresh", streams=streams)
    assert moved.returncode == 0, moved.stderr
    assert run_dag(streams_file=streams).state == "success"
    assert stored_org(db) == SECOND_ORG
    assert watermark(db)[0][1] == "15"
    assert len(salesforce_contacts(emulator)) == 15


def test_a_stream_writes_through_the_connection_it_names(db, emulator, run_dag, tmp_path, monkeypatch, stack):
    """``connection: salesforce_sandbox``: that connection is used; salesforce_default is not even read."""
    monkeypatch.setenv("AIRFLOW_CONN_SALESFORCE_SANDBOX", json.dumps(stack.emulator_info.airflow_connection()))
    broken = {**stack.emulator_info.airflow_connection(), "password": "not-a-token"}
    monkeypatch.setenv("AIRFLOW_CONN_SALESFORCE_DEFAULT", json.dumps(broken))
    streams = write_streams(
        tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0, connection="salesforce_sandbox")}
    )
    insert_contacts(db, 3)
    run = run_dag(streams_file=streams)
    assert run.state == "success", run.log[-2000:]
    assert len(salesforce_contacts(emulator)) == 3
    assert stored_org(db) == FIRST_ORG


def test_a_connection_name_airflow_cannot_hold_is_refused_by_the_stream_file(tmp_path):
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(connection="sales force; rm")})
    checked = cli("export", "--stream", "contacts", "--dry-run", streams=streams)
    assert checked.returncode == 1
    assert "connection" in checked.stderr
