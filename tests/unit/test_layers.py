"""The package's layers, as a reviewer of a deployment would check them.

- Nothing deployed (``include/``, ``dags/``, ``plugins/``) imports the
  development stack (``devstack/``), which is never installed on workers.
- The pure modules import neither Airflow nor a driver nor an HTTP client, so
  the decisions they hold are testable without I/O.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOYED = ("include", "dags", "plugins")
PURE_MODULES = (
    "include.crm_export.names",
    "include.crm_export.errors",
    "include.crm_export.pause_variable",
    "include.crm_export.config",
    "include.crm_export.mapping",
    "include.crm_export.batch",
    "include.crm_export.decisions",
    "include.crm_export.concurrency",
    "include.crm_export.bulk_csv",
    "include.crm_export.values",
    "include.crm_export.export.paths",
)
IO_PACKAGES = ("airflow", "psycopg", "psycopg2", "simple_salesforce", "requests", "sqlalchemy", "fastapi")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("tree", DEPLOYED)
def test_nothing_deployed_imports_the_development_stack(tree):
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if m.split(".")[0] == "devstack")
        for path in (ROOT / tree).rglob("*.py")
    }
    offenders = {path: modules for path, modules in offenders.items() if modules}
    assert offenders == {}, f"deployed code imports the development stack: {offenders}"


def test_development_stack_is_not_inside_the_deployed_package():
    product = {path.name for path in (ROOT / "include" / "crm_export").iterdir()}
    assert not product & {"emulator", "local", "embedded.py", "source_schema.sql"}


def test_pure_modules_import_no_airflow_driver_or_http_client():
    code = (
        "import sys\n"
        + "".join(f"import {module}\n" for module in PURE_MODULES)
        + f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({IO_PACKAGES!r})))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", f"pure modules pulled in {result.stdout.strip()}"
