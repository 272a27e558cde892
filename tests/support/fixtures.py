"""The test fixtures, registered for every test through ``pytest_plugins`` (``tests/conftest.py``).

Services (PostgreSQL, the emulator) are started by the session hooks in
``tests/conftest.py``; these fixtures hand them to tests: the emulator's admin
API with a clean org, a simple-salesforce client through the real
SalesforceHook, scratch databases, the project database with fresh source
tables, Airflow's metadata database, the pause on error Variable, and CRMExport
or CRMExport_ExportError run through a real DagBag and ``dag.test()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devstack.stack import PROJECT_ROOT, LocalStack
from include.crm_export.db.migrate import migrate
from tests.support import services
from tests.support.helpers import free_port

SOURCE_SCHEMA_SQL = PROJECT_ROOT / "devstack" / "source_schema.sql"


@pytest.fixture(scope="session")
def stack() -> LocalStack:
    return services.running()


@pytest.fixture(scope="session")
def project_conninfo(stack: LocalStack) -> str:
    from devstack.stack import project_conninfo

    return project_conninfo()


@pytest.fixture
def emulator(stack: LocalStack):
    """The emulator's admin API, with a clean org (no records, rules or counters)."""
    from devstack.emulator.process import EmulatorAdmin

    assert stack.emulator_info is not None
    admin = EmulatorAdmin(stack.emulator_info)
    admin.reset()
    yield admin
    admin.reset()


@pytest.fixture
def sf(emulator):
    """simple-salesforce client from ``salesforce_default`` through the real SalesforceHook."""
    from include.crm_export.salesforce import connect

    return connect(timeout=(5, 10))


@pytest.fixture
def scratch_database(stack: LocalStack) -> Iterator[str]:
    """An empty database of its own, dropped afterwards; yields its conninfo."""
    import uuid

    assert stack.postgres is not None, "scratch databases need the embedded server"
    name = f"scratch_{uuid.uuid4().hex[:12]}"
    stack.postgres.create_database(name)
    yield stack.postgres.address.url(name)
    stack.postgres.drop_database(name)


@pytest.fixture
def scratch_conn(scratch_database: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(scratch_database) as conn:
        yield conn


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Airflow's metadata database, migrated once per test session."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, env=os.environ.copy()
    )


@pytest.fixture
def db(project_conninfo: str) -> Iterator[psycopg.Connection]:
    """The project database with fresh source tables, no watermarks and no ExportErrors."""
    with psycopg.connect(project_conninfo, autocommit=True) as conn:
        migrate(conn)
        # Fresh source tables: a test may change them (a column added), and the test database outlives a run.
        # A capture test's replication slot keeps WAL until dropped: none outlives its test.
        conn.execute(
            r"""SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                WHERE slot_name LIKE 'crm\_export\_%' AND NOT active"""
        )
        publications = conn.execute(r"SELECT pubname FROM pg_publication WHERE pubname LIKE 'crm\_export\_%'")
        for (publication,) in publications.fetchall():
            conn.execute(f'DROP PUBLICATION "{publication}"')
        conn.execute("DROP SCHEMA IF EXISTS crm CASCADE")
        conn.execute(SOURCE_SCHEMA_SQL.read_text())
        conn.execute("DROP SCHEMA IF EXISTS crm_test CASCADE")
        conn.execute(
            "TRUNCATE crm.accounts, crm.contacts, crm.subscriptions, "
            'crm_export.stream_watermarks, crm_export."ExportErrors", '
            "crm_export.api_requests, crm_export.stream_repositions, crm_export.horizon_samples, "
            "crm_export.export_runs, crm_export.stream_alerts, crm_export.bulk_jobs, crm_export.external_ids, "
            "crm_export.external_ids_filled, crm_export.fingerprints, crm_export.fingerprint_streams, "
            "crm_export.captured_changes, crm_export.capture_slots, crm_export.slot_alerts "
            "RESTART IDENTITY"
        )
        conn.execute("DROP TRIGGER IF EXISTS fail_watermark_update ON crm_export.stream_watermarks")
        conn.execute("DROP TRIGGER IF EXISTS change_a_record_of_the_first_job ON crm_export.bulk_jobs")
        yield conn
        conn.execute("DROP TRIGGER IF EXISTS fail_watermark_update ON crm_export.stream_watermarks")
        conn.execute("DROP TRIGGER IF EXISTS change_a_record_of_the_first_job ON crm_export.bulk_jobs")


@pytest.fixture
def pause_variable(airflow_db) -> Iterator[Any]:
    """Set crm_export_pause_on_error in Airflow's metadata database, as Admin > Variables does."""
    from airflow.models.variable import Variable

    def set_value(value: str | None) -> None:
        Variable.delete("crm_export_pause_on_error")
        if value is not None:
            Variable.set("crm_export_pause_on_error", value, description="set by a test")

    set_value(None)
    yield set_value
    set_value(None)


@dataclass
class Run:
    state: str
    task_states: dict[str, str]
    log: str


@pytest.fixture
def run_dag(run_crm_export):
    return run_crm_export


@pytest.fixture
def run_crm_export(airflow_db, pause_variable, capfd, caplog, emulator, monkeypatch):
    """Parse the DAGs with a real DagBag and run CRMExport with dag.test(); returns states and the task log."""

    def run(
        *,
        dag_id: str = "CRMExport",
        streams_file: Path | None = None,
        retries: bool = True,
        conf: dict[str, Any] | None = None,
    ) -> Run:
        from airflow.dag_processing.dagbag import DagBag

        if streams_file is not None:
            monkeypatch.setenv("CRM_EXPORT_STREAMS_FILE", str(streams_file))
        bag = DagBag(str(PROJECT_ROOT / "dags"))
        assert bag.import_errors == {}, bag.import_errors
        dag = bag.get_dag(dag_id)
        if not retries:
            # Airflow's retry delay would make dag.test() wait minutes for the
            # retry; that retries are configured is asserted in test_dagbag.
            for task in dag.tasks:
                task.retries = 0
        capfd.readouterr()
        caplog.clear()
        dag_run = dag.test(run_conf=conf)
        out, err = capfd.readouterr()
        sys.stderr.write(err[-20000:])
        # Task logs reach the terminal or pytest's log capture depending on
        # how Airflow configured logging first; a user sees the same lines.
        return Run(
            state=str(dag_run.state),
            task_states={ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()},
            log=out + err + caplog.text,
        )

    return run


@pytest.fixture
def mailbox(monkeypatch):
    """An SMTP server on loopback, and crm_export_email pointing at it; yields the messages received."""
    from aiosmtpd.controller import Controller

    received = []

    class Keep:
        async def handle_DATA(self, server, session, envelope):
            received.append((envelope.rcpt_tos, message_from_bytes(envelope.content, policy=policy.default)))
            return "250 OK"

    controller = Controller(Keep(), hostname="127.0.0.1", port=free_port())
    controller.start()
    connection = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": controller.port,
        "extra": {
            "to": "oncall@example.com, data@example.com",
            "from_email": "crm-export@example.com",
            "disable_ssl": True,
            "disable_tls": True,
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_CRM_EXPORT_EMAIL", json.dumps(connection))
    try:
        yield received
    finally:
        controller.stop()


@pytest.fixture
def slack(monkeypatch):
    """An HTTP server shaped like a Slack Incoming Webhook, and crm_export_slack pointing at it.

    Yields the JSON payloads received; ``slack.status`` sets what it answers (Slack answers 200 "ok").
    """

    class Webhook(list):
        status = 200

    received = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            answer = b"ok" if received.status == 200 else b"no_service"
            if received.status == 200:
                received.append((self.path, payload))
            self.send_response(received.status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/services/T0001/B0001/secret"
    monkeypatch.setenv("AIRFLOW_CONN_CRM_EXPORT_SLACK", json.dumps({"conn_type": "slackwebhook", "password": url}))
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()
