"""Test harness: one real PostgreSQL server and one Salesforce emulator per test session.

Both are started before collection (Airflow reads its configuration at import,
so the connections must be in the environment first) and stopped at the end,
also when the run fails or is interrupted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from include.crm_export.local.stack import PROJECT_ROOT, LocalStack

_stack: LocalStack | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _stack
    if _stack is not None:
        return
    root = Path(os.environ.get("CRM_EXPORT_TEST_ROOT", PROJECT_ROOT / ".crm_export" / "test"))
    _stack = LocalStack(root, project_database="crm_export_test", airflow_database="airflow_test")
    os.environ.update(_stack.start())


def pytest_unconfigure(config: pytest.Config) -> None:
    global _stack
    if _stack is not None:
        _stack.stop()
        _stack = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = Path(str(item.fspath)).relative_to(PROJECT_ROOT / "tests").parts[0]
        if kind in ("unit", "integration", "dags"):
            item.add_marker(kind)


@pytest.fixture(scope="session")
def stack() -> LocalStack:
    assert _stack is not None
    return _stack


@pytest.fixture(scope="session")
def project_conninfo() -> str:
    from include.crm_export.db.connection import conninfo_for

    return conninfo_for()


@pytest.fixture
def emulator(stack: LocalStack):
    """The emulator's admin API, with a clean org (no records, rules or counters)."""
    from include.crm_export.emulator.process import EmulatorAdmin

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
