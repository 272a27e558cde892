"""Tests by cost: the unit tests run without PostgreSQL, the emulator or Airflow."""

from __future__ import annotations

import os
import subprocess
import sys

from devstack.stack import PROJECT_ROOT


def test_unit_tests_start_no_service(tmp_path):
    root = tmp_path / "services"
    env = {**os.environ, "CRM_EXPORT_TEST_ROOT": str(root)}
    env = {k: v for k, v in env.items() if not k.startswith("PYTEST_")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "unit", "-q", "-p", "no:cacheprovider", "tests/unit"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
    assert not root.exists(), "the unit tests started the test services"
    assert "PostgreSQL" not in result.stdout + result.stderr
