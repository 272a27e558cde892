"""What a deployment gets: requirements.txt and the DAG folder, nothing of the development stack.

A data engineer deploying into an existing Airflow copies ``dags/``,
``include/`` and ``plugins/`` and installs ``requirements.txt``. These tests
check that this is enough (a DagBag with both DAGs and no import error in a
fresh virtualenv holding only requirements.txt) and that the product never
reaches for a development-only distribution.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from include.crm_export.names import EXPORT_DAG_ID, REEXPORT_DAG_ID

ROOT = Path(__file__).resolve().parents[2]


def _requirement_lines(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            lines += _requirement_lines(path.parent / line[3:].strip())
        else:
            lines.append(line)
    return lines


def _closure(path: Path) -> set[str]:
    """Every installed distribution a requirements file pulls in (with extras and markers)."""
    seen: set[str] = set()
    todo = [(Requirement(line), "") for line in _requirement_lines(path)]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = _normal(requirement.name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for wanted_extra in ("", *requirement.extras):
            key = f"{name}[{wanted_extra}]"
            if key in seen:
                continue
            seen.add(key)
            todo += [(Requirement(r), wanted_extra) for r in dist.requires or []]
    return {key.split("[")[0] for key in seen}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _product_modules() -> list[str]:
    modules = []
    for path in sorted((ROOT / "include" / "crm_export").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def test_product_modules_import_with_every_development_only_distribution_hidden():
    dev_only = _closure(ROOT / "requirements-dev.txt") - _closure(ROOT / "requirements.txt")
    assert {"pgserver", "pytest", "selenium"} <= dev_only  # the check itself sees what it must
    hidden = sorted(
        module
        for module, owners in metadata.packages_distributions().items()
        if {_normal(owner) for owner in owners} <= dev_only
    )
    # As if those distributions were not installed: a product module that
    # needs one fails to import. (Third-party modules that merely try an
    # optional import, as some do for trio or PySocks, carry on.)
    code = (
        "import importlib, importlib.abc, sys\n"
        f"HIDDEN = set({hidden!r})\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in HIDDEN:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (development only)', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        f"for name in {_product_modules()!r}: importlib.import_module(name)\n"
        "sys.path.insert(0, 'plugins'); importlib.import_module('crm_export_plugin')\n"
        "print('imported', len(sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=os.environ)
    assert result.returncode == 0, f"a product module needs a development-only distribution: {result.stderr[-3000:]}"


def test_requirements_txt_alone_gives_a_dagbag_with_both_dags(tmp_path):
    venv = tmp_path / "venv"
    uv = ROOT / ".venv" / "bin" / "uv"
    subprocess.run([str(uv), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    install = subprocess.run(
        [str(uv), "pip", "install", "--quiet", "-r", "requirements.txt", "-c", "constraints.txt"],
        cwd=ROOT,
        env={**os.environ, "VIRTUAL_ENV": str(venv)},
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    # A deployment's Python: only requirements.txt, the project root on PYTHONPATH (as Astro does).
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CRM_EXPORT", "PYTHON"))}
    env = {
        **clean,
        "PYTHONPATH": str(ROOT),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    code = (
        "import json\n"
        "from importlib.util import find_spec\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag({str(ROOT / 'dags')!r})\n"
        "print(json.dumps({'dags': sorted(bag.dag_ids), 'errors': {k: str(v) for k, v in bag.import_errors.items()},\n"
        "                  'dev': [m for m in ('pgserver', 'selenium', 'pytest') if find_spec(m)]}))\n"
    )
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"dags": sorted([EXPORT_DAG_ID, REEXPORT_DAG_ID]), "errors": {}, "dev": []}
