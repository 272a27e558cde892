"""The README's run command and the walk-through, against a real scheduler.

Starts `python -m devstack run` from scratch (its own embedded
PostgreSQL, emulator and Airflow: API server, scheduler, DAG processor,
triggerer), drives the walk-through through Airflow's REST API, then stops it
with Ctrl-C and checks that nothing is left running. Then starts it a second
time on the same data.
"""

from __future__ import annotations

import io
import time

import psycopg
import pytest

from devstack.compare import compare
from devstack.walkthrough import walkthrough_for
from include.crm_export.config import load_streams
from tests.support.helpers import free_port, start_local_run, stop_local_run


@pytest.mark.timeout(900)
def test_run_command_and_walkthrough_against_a_real_scheduler(tmp_path):
    root = tmp_path / "local"
    port = free_port()
    log_path = tmp_path / "first-run.log"
    started = time.monotonic()
    process = start_local_run(root, port, log_path)
    try:
        print(f"run command ready after {time.monotonic() - started:.0f}s")
        out = io.StringIO()
        walk_started = time.monotonic()
        walkthrough_for(root, port=port, out=out).run()
        print(out.getvalue())
        print(f"walk-through took {time.monotonic() - walk_started:.0f}s")
        text = out.getvalue()
        assert "is held at record" in text
        assert "Salesforce is incomplete" in text
        assert "contacts: Salesforce equals the source" in text
        assert "subscriptions: Salesforce equals the source" in text
        assert "accounts: Salesforce equals the source" in text
        assert "Waiting for its parent" in text  # the contact held behind its account
    finally:
        stop_local_run(process, root)

    # A second start reuses the data: same records, the Variable as it was left.
    log_path = tmp_path / "second-run.log"
    process = start_local_run(root, port, log_path)
    try:
        from devstack.airflow_api import AirflowApi

        api = AirflowApi(f"http://localhost:{port}")
        api.login()
        assert api.get_variable("crm_export_pause_on_error")["value"] == "true"
        assert "Seeded" not in log_path.read_text()
        again = walkthrough_for(root, port=port)
        with psycopg.connect(again.conninfo) as conn:
            accounts = {"Account": again.emulator.records("Account")}
            comparison = compare(conn, load_streams()["contacts"], again.emulator.records("Contact"), accounts)
        assert comparison.equal, comparison.describe()  # Salesforce (emulator) and PostgreSQL kept their data
    finally:
        stop_local_run(process, root)
