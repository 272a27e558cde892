"""``python -m devstack run``: crm-export on embedded defaults.

Starts the embedded PostgreSQL, the Salesforce emulator and a local Airflow
(API server with the UI, scheduler, DAG processor, triggerer), all pointed at
each other, and stops every one of them on Ctrl-C or when one of them dies.
Data is kept under ``.crm_export/local``, so a second start picks up where the
first left off.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from devstack import demo
from devstack.airflow_api import AirflowApi
from devstack.emulator.process import EmulatorAdmin, die_with_parent
from devstack.stack import PROJECT_ROOT, LocalStack
from include.crm_export.db.connection import Database
from include.crm_export.db.migrate import migrate

log = logging.getLogger("crm_export.local")

LOCAL_ROOT = PROJECT_ROOT / ".crm_export" / "local"
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def airflow_environment(stack_env: dict[str, str], *, port: int, root: Path) -> dict[str, str]:
    airflow_home = Path(stack_env["AIRFLOW_HOME"])
    airflow_home.mkdir(parents=True, exist_ok=True)
    passwords = airflow_home / "simple_auth_manager_passwords.json"
    if not passwords.exists():
        passwords.write_text(json.dumps({"admin": "admin"}))
    base_url = os.environ.get("AIRFLOW__API__BASE_URL", f"http://localhost:{port}")
    prefix = urllib.parse.urlsplit(base_url).path.rstrip("/")  # Airflow serves everything under it
    return {
        **os.environ,
        **stack_env,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": os.environ.get(
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__API__PORT": str(port),
        # Where the UI is reached, and the CRM Export page reaches Airflow's REST API (a proxy's URL, if any).
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}{prefix}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": _stable_secret(root / "jwt_secret"),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
    }


def _stable_secret(path: Path) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(os.urandom(24).hex())
        path.chmod(0o600)
    return path.read_text().strip()


def _wait_for_ui(port: int, processes: dict[str, subprocess.Popen], timeout: float = 180) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        for name, process in processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with code {process.returncode} while starting")
        try:
            with urllib.request.urlopen(f"http://localhost:{port}/api/v2/monitor/health", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"The Airflow UI did not answer on port {port} within {timeout:.0f}s")


def _stop(processes: dict[str, subprocess.Popen]) -> None:
    for process in processes.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for process in processes.values():
        try:
            process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    stack = LocalStack(root, emulator_port=args.emulator_port, persist_emulator=True)
    processes: dict[str, subprocess.Popen] = {}
    # Ctrl-C stops everything even when started from a shell that ignores
    # SIGINT for background jobs; SIGTERM (`kill`) does the same.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    try:
        stack_env = stack.start()
        os.environ.update(stack_env)
        (root / "postgres.json").write_text(stack_env.get("AIRFLOW_CONN_CRM_EXPORT_POSTGRES", "{}"))
        with Database().connect(application_name="crm-export local run") as conn:
            migrate(conn)
            first_start = demo.seed_source(conn)
        env = airflow_environment(stack_env, port=args.port, root=root)
        logs = root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log.info("Migrating the Airflow metadata database…")
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
        for component in AIRFLOW_COMPONENTS:
            with (logs / f"{component}.log").open("ab") as out:
                processes[component] = subprocess.Popen(
                    [sys.executable, "-m", "airflow", component],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=PROJECT_ROOT,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
        _wait_for_ui(args.port, processes)
        ui_at = time.monotonic() - started
        info = stack.emulator_info
        if first_start:
            demo.seed_salesforce(EmulatorAdmin(info))
        # Airflow serves its API and login under [api] base_url's path prefix, if it has one.
        prefix = urllib.parse.urlsplit(env["AIRFLOW__API__BASE_URL"]).path.rstrip("/")
        api = AirflowApi(f"http://localhost:{args.port}{prefix}")
        api.login()
        demo.configure_airflow(api)
        elapsed = time.monotonic() - started
        print(
            f"\ncrm-export is running: the UI answered {ui_at:.0f}s after start, demo ready after {elapsed:.0f}s.\n"
            f"  Airflow UI:           http://localhost:{args.port}  (login admin / admin)\n"
            f"  Salesforce emulator:  {info.url}  (records: {info.url}/__emulator__/records/Contact)\n"
            f"  Logs:                 {logs}\n"
            "CRMExport is on and exports the demo data every 15 minutes; its first run is held at a contact that\n"
            "breaks a Salesforce validation rule. Walk through the whole story with `make walkthrough`.\n"
            "Press Ctrl-C to stop everything.\n",
            flush=True,
        )
        while True:
            for name, process in processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"airflow {name} exited with code {process.returncode}; see {logs / name}.log")
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nStopping…", flush=True)
        return 0
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        log.error("%s", exc)
        return 1
    finally:
        _stop(processes)
        stack.stop()
        print("Stopped Airflow, the Salesforce emulator and PostgreSQL.", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="start everything on embedded defaults; Ctrl-C stops it")
    run_parser.add_argument("--port", type=int, default=int(os.environ.get("CRM_EXPORT_UI_PORT", "8080")))
    run_parser.add_argument("--emulator-port", type=int, default=0)
    run_parser.add_argument("--root", default=str(LOCAL_ROOT))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
