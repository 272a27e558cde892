"""Auth as the provider's hook does it: a session that ends mid-run is renewed by simple-salesforce itself."""

from __future__ import annotations

import json

from tests.support.helpers import contacts_stream, insert_contacts, open_errors, salesforce_contacts, write_streams


def test_an_export_through_the_hooks_client_credentials_login_survives_a_revoked_session(
    db, emulator, run_dag, stack, monkeypatch, tmp_path
):
    monkeypatch.setenv(
        "AIRFLOW_CONN_SALESFORCE_DEFAULT", json.dumps(stack.emulator_info.client_credentials_connection())
    )
    insert_contacts(db, 600)
    # After the first batch every session is revoked and the second request gets 401 INVALID_SESSION_ID.
    emulator.add_rule(fault="session_expiry", path="/composite/", skip=1, times=1)

    run = run_dag(streams_file=write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)}))

    assert run.state == "success"
    assert len(salesforce_contacts(emulator)) == 600
    assert open_errors(db) == []
    # The login, then a renewal by simple-salesforce for each request in flight that met the revoked session.
    assert 2 <= emulator.counters()["sessions_issued"] <= 3
