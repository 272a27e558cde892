"""The README's run command and the walk-through, against a real scheduler.

Starts `python -m include.crm_export.local run` from scratch (its own embedded
PostgreSQL, emulator and Airflow: API server, scheduler, DAG processor,
triggerer), drives the walk-through through Airflow's REST API, then stops it
with Ctrl-C and checks that nothing is left running. Then starts it a second
time on the same data.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from include.crm_export.config import load_streams
from include.crm_export.local.stack import PROJECT_ROOT
from include.crm_export.local.verify import compare
from include.crm_export.local.walkthrough import walkthrough_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_local_run(root: Path, port: int, log_path: Path) -> subprocess.Popen:
    # A clean environment: the test session's own connections must not leak into the local run.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CRM_EXPORT"))}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "include.crm_export.local", "run", "--root", str(root), "--port", str(port)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if "Press Ctrl-C to stop everything" in log_path.read_text(errors="replace"):
            return process
        if process.poll() is not None:
            raise AssertionError(f"the run command exited early:\n{log_path.read_text()[-4000:]}")
        time.sleep(1)
    process.send_signal(signal.SIGINT)
    raise AssertionError(f"the run command did not come up:\n{log_path.read_text()[-4000:]}")


def stop_local_run(process: subprocess.Popen, root: Path) -> None:
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 0
    leftovers = subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], f"still running after Ctrl-C: {leftovers}"
    assert not (root / "postgres" / "data" / "postmaster.pid").exists()


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
    finally:
        stop_local_run(process, root)

    # A second start reuses the data: same records, the Variable as it was left.
    log_path = tmp_path / "second-run.log"
    process = start_local_run(root, port, log_path)
    try:
        from include.crm_export.local.airflow_api import AirflowApi

        api = AirflowApi(f"http://localhost:{port}")
        api.login()
        assert api.get_variable("crm_export_pause_on_error")["value"] == "true"
        assert "Seeded" not in log_path.read_text()
        again = walkthrough_for(root, port=port)
        with psycopg.connect(again.conninfo) as conn:
            comparison = compare(conn, load_streams()["contacts"], again.emulator.records("Contact"))
        assert comparison.equal, comparison.describe()  # Salesforce (emulator) and PostgreSQL kept their data
    finally:
        stop_local_run(process, root)
