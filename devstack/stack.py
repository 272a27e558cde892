"""The local stack: embedded PostgreSQL and the Salesforce emulator, wired for Airflow.

Used by the README's run command and by the test suite. It starts what is
missing, hands back the environment variables that point Airflow (metadata
database, ``crm_export_postgres``, ``salesforce_default``) at it, and stops
everything it started, also when the caller fails.

A ``crm_export_postgres`` connection already set in the environment
(``AIRFLOW_CONN_CRM_EXPORT_POSTGRES``) is used as is and no embedded server is
started; Airflow's own metadata database then has to be configured too
(``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import psycopg

from devstack.emulator.process import EmulatorInfo, EmulatorProcess
from devstack.postgres import EmbeddedPostgres
from include.crm_export.names import POSTGRES_CONN_ID

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class LocalStack:
    def __init__(
        self,
        root: Path,
        *,
        project_database: str = "crm_export",
        airflow_database: str = "airflow",
        emulator_port: int = 0,
        emulator_token: str | None = None,
        persist_emulator: bool = False,
    ) -> None:
        self.persist_emulator = persist_emulator
        self.root = Path(root).resolve()
        self.project_database = project_database
        self.airflow_database = airflow_database
        self.emulator_port = emulator_port
        self._sigterm: Any = None  # the SIGTERM handler to put back (__enter__)
        self.emulator_token = emulator_token
        self.postgres: EmbeddedPostgres | None = None
        self.emulator: EmulatorProcess | None = None
        self.emulator_info: EmulatorInfo | None = None
        self.env: dict[str, str] = {}

    def start(self) -> dict[str, str]:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> dict[str, str]:
        env = {
            "AIRFLOW_HOME": str(self.root / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
        }
        if os.environ.get("AIRFLOW_CONN_CRM_EXPORT_POSTGRES"):
            log.info("Using the configured crm_export_postgres connection; no embedded PostgreSQL started")
        else:
            self.postgres = EmbeddedPostgres(self.root / "postgres")
            address = self.postgres.start()
            self.postgres.create_database(self.project_database)
            self.postgres.create_database(self.airflow_database)
            env["AIRFLOW_CONN_CRM_EXPORT_POSTGRES"] = json.dumps(
                {
                    "conn_type": "postgres",
                    "host": address.host,
                    "port": address.port,
                    "login": address.user,
                    "password": address.password,
                    "schema": self.project_database,
                }
            )
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = (
                f"postgresql+psycopg2://{address.user}:{address.password}@{address.host}:{address.port}"
                f"/{self.airflow_database}"
            )
        self.emulator = EmulatorProcess(
            self.root / "emulator",
            port=self.emulator_port,
            access_token=self.emulator_token,
            persist=self.persist_emulator,
        )
        self.emulator_info = self.emulator.start()
        env["AIRFLOW_CONN_SALESFORCE_DEFAULT"] = json.dumps(self.emulator_info.airflow_connection())
        env["CRM_EXPORT_EMULATOR"] = str(self.root / "emulator" / "emulator.json")
        self.env = env
        return env

    def stop(self) -> None:
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None

    def __enter__(self) -> dict[str, str]:
        # A benchmark stopped with `kill` stops its server and emulator too: SIGTERM unwinds like Ctrl-C (the
        # default would end the process without running __exit__ and leave PostgreSQL running).
        self._sigterm = None
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            if self._sigterm is not None:
                signal.signal(signal.SIGTERM, self._sigterm)


def project_conninfo(conn_id: str = POSTGRES_CONN_ID) -> str:
    """A libpq connection string for the ``crm_export_postgres`` Airflow connection.

    For tests, benchmarks and the demo, which talk to the database directly
    (the product connects through ``include.crm_export.db.connection.Database``).
    """
    from airflow.sdk import BaseHook

    connection = BaseHook.get_connection(conn_id)
    parts = {
        "host": connection.host or "localhost",
        "port": str(connection.port or 5432),
        "dbname": connection.schema or "postgres",
        "user": connection.login or "",
        "password": connection.password or "",
    }
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in parts.items() if v})
