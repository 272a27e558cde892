"""Start and stop the emulator as a separate process, and talk to its admin API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from include.crm_export import exact_json
from include.crm_export.http import SalesforceSession

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class EmulatorError(RuntimeError):
    """The emulator did not start, or an admin call failed."""


@dataclass(frozen=True)
class EmulatorInfo:
    url: str
    ca_bundle: str
    access_token: str
    client_id: str
    client_secret: str
    pid: int

    def airflow_connection(self, *, version: str = "62.0") -> dict[str, Any]:
        """The ``salesforce_default`` connection for a direct session with this emulator."""
        return {
            "conn_type": "salesforce",
            "password": self.access_token,
            "extra": {
                "instance_url": self.url,
                "version": version,
                "ca_bundle": self.ca_bundle,
            },
        }

    def client_credentials_connection(self, *, version: str = "62.0") -> dict[str, Any]:
        """``salesforce_default`` for the provider hook's own OAuth client credentials login, against this emulator.

        simple-salesforce builds the token URL as https://{domain}.salesforce.com/services/oauth2/token; a
        domain ending in "?" turns the rest into a query string, so it reaches the emulator's token endpoint.
        A real org uses its My Domain name (for example "mycompany.my").
        """
        host = self.url.removeprefix("https://")
        return {
            "conn_type": "salesforce",
            "extra": {
                "consumer_key": self.client_id,
                "consumer_secret": self.client_secret,
                "domain": f"{host}/services/oauth2/token?through=",
                "version": version,
                "ca_bundle": self.ca_bundle,
            },
        }


class EmulatorProcess:
    """The emulator as a child process; a context manager that always stops it."""

    def __init__(
        self, state_dir: Path, *, port: int = 0, access_token: str | None = None, persist: bool = False
    ) -> None:
        self.persist = persist
        self.state_dir = Path(state_dir).resolve()
        self.port = port
        self.access_token = access_token
        self.log_file = self.state_dir / "emulator.log"
        self._process: subprocess.Popen | None = None
        self.info: EmulatorInfo | None = None

    def start(self, *, timeout: float = 30) -> EmulatorInfo:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ready = self.state_dir / "emulator.json"
        ready.unlink(missing_ok=True)
        command = [
            sys.executable,
            "-m",
            "devstack.emulator",
            "serve",
            "--state-dir",
            str(self.state_dir),
            "--port",
            str(self.port),
        ]
        if self.access_token:
            command += ["--access-token", self.access_token]
        if self.persist:
            command.append("--persist")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
        }
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmulatorError(
                    f"The Salesforce emulator exited with code {self._process.returncode}; see {self.log_file}"
                )
            if ready.exists():
                raw = json.loads(ready.read_text())
                if raw["pid"] == self._process.pid:
                    info = EmulatorInfo(**{k: raw[k] for k in EmulatorInfo.__dataclass_fields__})
                    if _healthy(info):
                        self.info = info
                        return info
            time.sleep(0.05)
        self.stop()
        raise EmulatorError(f"The Salesforce emulator did not answer within {timeout:.0f}s; see {self.log_file}")

    def stop(self, *, timeout: float = 10) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def __enter__(self) -> EmulatorInfo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def die_with_parent() -> None:
    """In a child process: have the kernel send SIGTERM when the parent dies (Linux).

    So a test run or local run that is killed outright does not leave the
    emulator or Airflow running.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass


def _healthy(info: EmulatorInfo) -> bool:
    try:
        return SalesforceSession(ca_bundle=info.ca_bundle, timeout=(2, 2)).get(f"{info.url}/__emulator__/health").ok
    except requests.RequestException:
        return False


class EmulatorAdmin:
    """The emulator's admin API: failure rules, stored records, counters."""

    def __init__(self, info: EmulatorInfo) -> None:
        self.info = info
        self._session = SalesforceSession(ca_bundle=info.ca_bundle, timeout=(5, 30))

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._session.request(method, f"{self.info.url}/__emulator__/{path}", **kwargs)
        if not response.ok:
            raise EmulatorError(f"{method} {path}: {response.status_code} {response.text}")
        return exact_json.loads(response.text)  # numbers exactly as the org holds them

    def add_rule(self, **rule: Any) -> dict[str, Any]:
        """Add a record rule (``cause=…``) or a request fault (``fault=…``); see ``rules.py``."""
        return self._call("POST", "rules", json=rule)

    def remove_rule(self, rule_id: int) -> None:
        self._call("DELETE", f"rules/{rule_id}")

    def clear_rules(self) -> None:
        self._call("DELETE", "rules")

    def rules(self) -> list[dict[str, Any]]:
        return self._call("GET", "rules")

    def records(self, sobject: str) -> list[dict[str, Any]]:
        return self._call("GET", f"records/{sobject}")

    def delete_record(self, sobject: str, record_id: str) -> dict[str, int]:
        """Delete a record in the org: {"lookups_cleared": n, "children_deleted": m} (children that cascade)."""
        answer = self._call("DELETE", f"records/{sobject}/{record_id}")
        return {"lookups_cleared": int(answer["lookups_cleared"]), "children_deleted": int(answer["children_deleted"])}

    def counters(self) -> dict[str, int]:
        return self._call("GET", "counters")

    def reset(self) -> None:
        self._call("POST", "reset")

    def set_field_access(self, sobject: str, field: str, *, visible: bool, after_requests: int = 0) -> None:
        """Grant or revoke the integration user's access to a field (field-level security), now or mid-run."""
        body = {"object": sobject, "field": field, "visible": visible, "after_requests": after_requests}
        self._call("POST", "field-access", json=body)

    def set_api_usage(self, *, daily_api_requests: int | None = None, used_elsewhere: int | None = None) -> str:
        """Set the org's daily API allowance and the requests its other integrations used; returns the header."""
        body = {"daily_api_requests": daily_api_requests, "used_elsewhere": used_elsewhere}
        return self._call("POST", "limits", json=body)["limit_info"]

    def set_timing(self, **timing: Any) -> dict[str, Any]:
        """Make requests take time: latency_ms, per_record_ms, jitter_ms (and the long-running limit); see timing.py."""
        return self._call("POST", "timing", json=timing)

    def fail_next_bulk_job(self, sobject: str, *, after_records: int) -> None:
        """The next Bulk API 2.0 job on ``sobject`` fails after processing ``after_records`` records."""
        self._call("POST", "bulk", json={"object": sobject, "fail_after_records": after_records})

    def leave_bulk_results_unrecorded(self, sobject: str, *, after_records: int) -> None:
        """The next Bulk API 2.0 job on ``sobject`` completes, but the results of the records after
        ``after_records`` are not recorded ("Results are not recorded for batches that exceed the daily batch
        allocation", Get Job Successful Record Results): they are in no result set."""
        self._call("POST", "bulk", json={"object": sobject, "unrecorded_after_records": after_records})

    def keep_ended_bulk_jobs_for(self, seconds: float) -> None:
        """Ended Bulk API 2.0 jobs are deleted after ``seconds`` (Salesforce: 7 days); then they answer 404."""
        self._call("POST", "bulk", json={"retention_seconds": seconds})

    def allow_hard_delete(self, allowed: bool = True) -> None:
        """Give (or take) the integration user the Bulk API Hard Delete permission (``hardDelete`` jobs)."""
        self._call("POST", "bulk", json={"hard_delete_allowed": allowed})

    def timing(self) -> dict[str, Any]:
        """The timing in force and the most requests served at once since it was set."""
        return self._call("GET", "timing")

    def set_org_id(self, org_id: str) -> None:
        """Become another org at the same URL (a sandbox refresh); reset() makes it the default org again."""
        self._call("POST", "org", json={"org_id": org_id})

    def add_assignment_rule(self, sobject: str, owner_id: str, *, active: bool = True) -> str:
        """A Lead (or Case) assignment rule giving records to ``owner_id``; returns its id."""
        return self._call(
            "POST", "assignment-rules", json={"sobject": sobject, "owner_id": owner_id, "active": active}
        )["Id"]

    def expire_sessions(self) -> None:
        self._call("POST", "sessions/expire")
