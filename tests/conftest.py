"""Test harness hooks: markers by tier, and the services started once the selection is known.

Tiers, by folder and marker: ``unit`` (pure, no services), ``integration``
(real PostgreSQL and the Salesforce emulator; DAGs through a real DagBag and
``dag.test()``), ``system`` (a real Airflow: scheduler, API server, Chromium,
Celery, the walk-through, deployment into a fresh venv). Airflow reads its
configuration when first imported, so no test module may import it at
collection time; the services' connections are put into the environment
before any test runs. Fixtures live in ``tests/support/fixtures.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from devstack.stack import PROJECT_ROOT
from tests.support import services

pytest_plugins = ["tests.support.fixtures"]

TIERS = ("unit", "integration", "system")
NEEDS_SERVICES = ("integration", "system")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).relative_to(PROJECT_ROOT / "tests").parts[0]
        if tier in TIERS:
            item.add_marker(tier)
    # The slowest tier first: with ``pytest -n N --dist loadfile`` (``make test``) workers take files in
    # this order, so the long system tests do not end up alone at the end of the run.
    order = {tier: position for position, tier in enumerate(reversed(TIERS))}
    items.sort(key=lambda item: min((order[m.name] for m in item.iter_markers() if m.name in order), default=3))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the services once the selection is known, if any selected test needs them."""
    if services.started() or session.config.option.collectonly:
        return
    if not any(item.get_closest_marker(tier) for item in session.items for tier in NEEDS_SERVICES):
        return
    if "airflow" in sys.modules:
        raise pytest.UsageError(
            "Airflow was imported while collecting tests, before the test services were configured; "
            "import it inside the test or fixture instead."
        )
    services.start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run of unit tests only must not have imported Airflow: unit tests are pure."""
    if not services.started() and session.testscollected and "airflow" in sys.modules and exitstatus == 0:
        session.config.get_terminal_writer().line(
            "A unit test imported Airflow; unit tests must run without it (move it to tests/integration).", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    services.stop()
