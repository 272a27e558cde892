"""A small client for Airflow's REST API (v2), as the UI uses it.

Only what the local run and the walk-through need: a token, DAGs, runs, task
instances and their logs, clearing, Variables.
"""

from __future__ import annotations

import time
from typing import Any

import requests

FINISHED = {"success", "failed"}


class AirflowApiError(RuntimeError):
    pass


class AirflowApi:
    def __init__(self, base_url: str, *, username: str = "admin", password: str = "admin") -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.session = requests.Session()
        self.session.trust_env = False  # loopback; no proxies

    def login(self) -> None:
        response = self.session.post(
            f"{self.base_url}/auth/token", json={"username": self.username, "password": self.password}, timeout=30
        )
        if response.status_code not in (200, 201):
            raise AirflowApiError(f"Login to Airflow failed: {response.status_code} {response.text[:300]}")
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def call(self, method: str, path: str, *, expect: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        response = self.session.request(method, f"{self.base_url}/api/v2/{path}", timeout=60, **kwargs)
        if response.status_code == 401:
            self.login()
            response = self.session.request(method, f"{self.base_url}/api/v2/{path}", timeout=60, **kwargs)
        if response.status_code not in expect:
            raise AirflowApiError(f"{method} /api/v2/{path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    # DAGs and runs

    def wait_for_dags(self, dag_ids: list[str], *, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = {d["dag_id"] for d in self.call("GET", "dags", params={"limit": 100})["dags"]}
            if set(dag_ids) <= found:
                return
            time.sleep(1)
        raise AirflowApiError(f"DAGs {dag_ids} were not parsed within {timeout:.0f}s; see the dag-processor log")

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.call("PATCH", f"dags/{dag_id}", json={"is_paused": paused})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        run = self.call(
            "POST", f"dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}}, expect=(200, 201)
        )
        return run["dag_run_id"]

    def runs(self, dag_id: str, *, limit: int = 5) -> list[dict[str, Any]]:
        return self.call("GET", f"dags/{dag_id}/dagRuns", params={"order_by": "-run_after", "limit": limit})["dag_runs"]

    def wait_for_run(self, dag_id: str, run_id: str, *, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.call("GET", f"dags/{dag_id}/dagRuns/{run_id}")["state"]
            if state in FINISHED:
                return state
            time.sleep(1)
        raise AirflowApiError(f"{dag_id} run {run_id} did not finish within {timeout:.0f}s")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.call("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> list[str]:
        """The task's log lines (their ``event`` text)."""
        body = self.call(
            "GET",
            f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"full_content": "true"},
            headers={"Accept": "application/json"},
        )
        lines = []
        for item in body.get("content", []):
            if isinstance(item, dict):
                lines.append(str(item.get("event", "")))
            else:
                lines.append(str(item))
        return lines

    def clear_failed(self, dag_id: str, run_id: str, task_ids: list[str]) -> None:
        """Clear as the UI's Clear does by default: these tasks and their failed downstream tasks (the task that
        keeps a run red when a stream failed, ``all_streams_succeeded``, among them)."""
        body = {"dry_run": False, "dag_run_id": run_id, "task_ids": task_ids, "only_failed": True}
        self.call("POST", f"dags/{dag_id}/clearTaskInstances", json={**body, "include_downstream": True})

    # Variables

    def get_variable(self, key: str) -> dict[str, Any] | None:
        try:
            return self.call("GET", f"variables/{key}")
        except AirflowApiError as exc:
            if " 404 " in f" {exc} ":
                return None
            raise

    def set_variable(self, key: str, value: str, *, description: str | None = None) -> None:
        body: dict[str, Any] = {"key": key, "value": value}
        if description is not None:
            body["description"] = description
        if self.get_variable(key) is None:
            self.call("POST", "variables", json=body, expect=(200, 201))
        else:
            self.call("PATCH", f"variables/{key}", json=body)
