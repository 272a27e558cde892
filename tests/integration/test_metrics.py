"""Run metrics reach a StatsD server through Airflow's own metrics interface."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from devstack.stack import PROJECT_ROOT
from tests.support.helpers import contacts_stream, insert_contacts, write_streams


def test_exported_rejected_held_and_lag_are_sent_to_statsd(db, emulator, pause_variable, tmp_path):
    insert_contacts(db, 12)
    emulator.add_rule(cause="validation_rule", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "5"})
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as statsd:
        statsd.bind(("127.0.0.1", 0))
        statsd.settimeout(0.5)
        env = {
            **os.environ,
            "CRM_EXPORT_STREAMS_FILE": str(streams),
            "AIRFLOW__METRICS__STATSD_ON": "True",
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(statsd.getsockname()[1]),
        }
        command = [sys.executable, "-m", "include.crm_export", "export", "--stream", "contacts", "--pause-on-error"]
        held = subprocess.run([*command, "true"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
        assert held.returncode == 2, held.stderr[-2000:]
        received = []
        try:
            while True:
                received += statsd.recv(65_536).decode().splitlines()
        except TimeoutError:
            pass
    assert "airflow.crm_export.exported.contacts:4|c" in received
    assert "airflow.crm_export.held.contacts:1|g" in received
    assert "airflow.crm_export.lag_rows.contacts:8|g" in received  # the held record 5 and the seven after it
    assert "airflow.crm_export.rejected.contacts.FIELD_CUSTOM_VALIDATION_EXCEPTION:1|c" in received
