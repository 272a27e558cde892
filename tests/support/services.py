"""The test session's services: one real PostgreSQL server and one Salesforce emulator, started lazily.

With ``pytest -n N`` each worker is a session of its own, with services of its own.

They start after collection, and only when a selected test needs them
(``tests/integration``, ``tests/system``): ``pytest -m unit`` starts neither,
nor Airflow. Both are stopped at the end, also when the run fails or is
interrupted (``tests/conftest.py`` calls :func:`stop`).
"""

from __future__ import annotations

import os
from pathlib import Path

from devstack.stack import PROJECT_ROOT, LocalStack

_stack: LocalStack | None = None


def start() -> None:
    """Start the services and put their connections into the environment (Airflow reads it when imported)."""
    global _stack
    if _stack is not None:
        return
    root = Path(os.environ.get("CRM_EXPORT_TEST_ROOT", PROJECT_ROOT / ".crm_export" / "test"))
    # Under pytest-xdist (``make test``) each worker has its own server, emulator and Airflow home.
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        root = root / worker
    _stack = LocalStack(root, project_database="crm_export_test", airflow_database="airflow_test")
    os.environ.update(_stack.start())


def stop() -> None:
    global _stack
    if _stack is not None:
        _stack.stop()
        _stack = None


def started() -> bool:
    return _stack is not None


def running() -> LocalStack:
    assert _stack is not None, "the test services start only for tests under tests/integration and tests/system"
    return _stack
