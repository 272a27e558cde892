"""Test harness: one real PostgreSQL server and one Salesforce emulator per test session, started lazily.

They start after collection, and only when a selected test needs them
(``tests/integration``, ``tests/dags``): ``pytest -m unit`` starts neither,
nor Airflow. Airflow reads its configuration when first imported, so no test
module may import it at collection time; the connections and the metadata
database are put into the environment before any test runs. Both services are
stopped at the end, also when the run fails or is interrupted.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from devstack.stack import PROJECT_ROOT, LocalStack

NEEDS_SERVICES = ("integration", "dags")
_stack: LocalStack | None = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = Path(str(item.fspath)).relative_to(PROJECT_ROOT / "tests").parts[0]
        if kind in ("unit", *NEEDS_SERVICES):
            item.add_marker(kind)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the services once the selection is known, if any selected test needs them."""
    global _stack
    if _stack is not None or session.config.option.collectonly:
        return
    if not any(item.get_closest_marker(kind) for item in session.items for kind in NEEDS_SERVICES):
        return
    if "airflow" in sys.modules:
        raise pytest.UsageError(
            "Airflow was imported while collecting tests, before the test services were configured; "
            "import it inside the test or fixture instead."
        )
    root = Path(os.environ.get("CRM_EXPORT_TEST_ROOT", PROJECT_ROOT / ".crm_export" / "test"))
    _stack = LocalStack(root, project_database="crm_export_test", airflow_database="airflow_test")
    os.environ.update(_stack.start())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run of unit tests only must not have imported Airflow: unit tests are pure."""
    if _stack is None and session.testscollected and "airflow" in sys.modules and exitstatus == 0:
        session.config.get_terminal_writer().line(
            "A unit test imported Airflow; unit tests must run without it (move the test to tests/dags).", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    global _stack
    if _stack is not None:
        _stack.stop()
        _stack = None


@pytest.fixture(scope="session")
def stack() -> LocalStack:
    assert _stack is not None, "the test services start only for tests under tests/integration and tests/dags"
    return _stack


@pytest.fixture(scope="session")
def project_conninfo(stack: LocalStack) -> str:
    from devstack.stack import project_conninfo

    return project_conninfo()


@pytest.fixture
def emulator(stack: LocalStack):
    """The emulator's admin API, with a clean org (no records, rules or counters)."""
    from devstack.emulator.process import EmulatorAdmin

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
