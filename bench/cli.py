"""How quick the command line is: ``send`` of one record, and ``export`` of a stream with nothing to do.

    .venv/bin/python bench/cli.py [--repeat 5] [--importtime]

Starts its own PostgreSQL and emulator (stopped at the end, also on failure),
exports 1,000 contacts once, then times each command ``--repeat`` times as a
fresh process, wall clock, as a person at a terminal waits for it. Targets
(issue 25): ``send`` under 3 s, an idle ``export`` under 4 s. With
``--importtime`` it also prints the ten slowest imports of each command
(``python -X importtime``), which is where most of the time goes. The last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from export_throughput import bench_streams, fill_source  # noqa: E402

COMMANDS = {
    "send": ["send", "--stream", "contacts", "--key", "42"],
    "export_idle": ["export", "--stream", "contacts", "--pause-on-error", "true"],
}


def timed(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "include.crm_export", *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return elapsed


def slowest_imports(args: list[str], env: dict[str, str], count: int = 10) -> list[tuple[str, float]]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "include.crm_export", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    cumulative: dict[str, float] = {}
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if match and len(match.group(2)) <= 1:  # top-level imports only: their cumulative time counts once
            cumulative[match.group(3)] = int(match.group(1)) / 1e6
    return sorted(cumulative.items(), key=lambda item: -item[1])[:count]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--importtime", action="store_true")
    args = parser.parse_args()

    from devstack.stack import LocalStack, project_conninfo
    from include.crm_export.db.migrate import migrate

    root = ROOT / ".crm_export" / "bench"
    root.mkdir(parents=True, exist_ok=True)
    streams_file = bench_streams(root / "streams-cli.yml")
    with LocalStack(root, project_database="bench_cli") as env:
        os.environ.update(env)
        import psycopg

        with psycopg.connect(project_conninfo(), autocommit=True) as conn:
            migrate(conn)
        fill_source(project_conninfo(), 1_000)
        env = {**os.environ, "CRM_EXPORT_STREAMS_FILE": str(streams_file)}
        timed(COMMANDS["export_idle"], env)  # the first export sends the 1,000; every later one has nothing to do
        figures: dict[str, object] = {}
        for name, command in COMMANDS.items():
            times = [timed(command, env) for _ in range(args.repeat)]
            figures[f"{name}_median_s"] = round(statistics.median(times), 2)
            figures[f"{name}_max_s"] = round(max(times), 2)
            print(f"{name}: median {statistics.median(times):.2f} s, max {max(times):.2f} s ({args.repeat} runs)")
            if args.importtime:
                for module, seconds in slowest_imports(command, env):
                    print(f"    import {module}: {seconds:.3f} s")
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
