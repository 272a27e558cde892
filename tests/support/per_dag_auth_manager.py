"""Airflow's SimpleAuthManager plus per-DAG access, as FAB and Keycloak auth managers grant it.

The system tests run a real API server with this auth manager to show that
the CRM Export page asks Airflow about the DAG itself, not only about a role.
``CRM_EXPORT_TEST_DAG_ACCESS="outsider=other_dag,exporter=CRMExport"``: each
named user may see only the DAGs listed (their role still decides what they
may do there); every other user is as SimpleAuthManager has them.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager


def _dag_access() -> dict[str, set[str]]:
    access = {}
    for entry in filter(None, os.environ.get("CRM_EXPORT_TEST_DAG_ACCESS", "").split(",")):
        user, _, dags = entry.partition("=")
        access[user.strip()] = {dag.strip() for dag in dags.split("|") if dag.strip()}
    return access


class PerDagAuthManager(SimpleAuthManager):
    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        allowed = _dag_access().get(user.username)
        if allowed is not None and (details is None or details.id not in allowed):
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)
