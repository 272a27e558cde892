"""What fingerprints save and cost: an ORM-like touch of many rows exported with and without them.

    .venv/bin/python bench/fingerprints.py [--rows 1000000] [--touched 200000] [--changed-percent 10]
                                           [--latency-ms 150] [--rounds 1]

Starts its own PostgreSQL and emulator (stopped at the end, also on failure).
With the code checked out here, once with the stream's ``skip_unchanged:
false`` ("without": nothing hashed, looked up or written) and once with the
default ("with"), on a fresh database and an emptied emulator answering each
request in ``--latency-ms``:

1. exports ``--rows`` contacts through sObject Collections (the first export);
2. touches the first ``--touched`` of them as an ORM does on save (their
   updated_at moves), ``--changed-percent`` of those with a changed title;
3. exports again (the touched export).

``--rounds N`` repeats both N times, which one goes first alternating, and
reports the median of each figure (one run's noise on this machine is a few
percent). Each mode's exports get their own PostgreSQL and emulator, started
fresh, so neither inherits the other's heap. Each export
is ``python -m include.crm_export export`` as a fresh process, wall clock;
API requests are what the emulator counted. Then the storage of
``crm_export.fingerprints`` per million records. Targets (issue 24): the
touched export makes at most 12% of the requests it makes without
fingerprints; the first export at most 5% slower; under 60 MB per million.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
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

from export_throughput import _info, bench_streams, fill_source  # noqa: E402

EXPORT = ["export", "--stream", "contacts", "--pause-on-error", "true"]


def export(code: Path, env: dict[str, str], admin) -> dict[str, float]:
    before = admin.counters().get("api_requests", 0)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "include.crm_export", *EXPORT], env=env, cwd=code, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"export of {code} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    exported = int(re.search(r"exported (\d+) record", done.stdout).group(1))  # type: ignore[union-attr]
    unchanged = re.search(r"unchanged \(not sent\): (\d+)", done.stdout)
    return {
        "seconds": round(seconds, 1),
        "requests": admin.counters().get("api_requests", 0) - before,
        "sent": exported,
        "unchanged": int(unchanged.group(1)) if unchanged else 0,
        "records_per_s": round((exported + (int(unchanged.group(1)) if unchanged else 0)) / seconds),
    }


def fresh_database(conninfo: str) -> None:
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS crm_export CASCADE")
        conn.execute("DROP SCHEMA IF EXISTS crm CASCADE")


def touch(conninfo: str, rows: int, changed_percent: float) -> None:
    import psycopg

    every = max(1, round(100 / changed_percent))
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            """UPDATE crm.contacts SET updated_at = now() - interval '1 hour' + id * interval '1 microsecond',
                                       title = CASE WHEN id %% %s = 0 THEN 'Director' ELSE title END
               WHERE id <= %s""",
            (every, rows),
        )
        conn.execute("VACUUM ANALYZE crm.contacts")


def storage(conninfo: str) -> dict[str, float]:
    import psycopg

    from include.crm_export.db import fingerprints

    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE crm_export.fingerprints")
        count = fingerprints.count(conn)
        total, heap = conn.execute(
            """SELECT pg_total_relation_size('crm_export.fingerprints'), pg_relation_size('crm_export.fingerprints')"""
        ).fetchone()
    return {
        "fingerprints": count,
        "mb_per_million": round(total / 1e6 * 1e6 / max(count, 1), 1),
        "heap_mb_per_million": round(heap / 1e6 * 1e6 / max(count, 1), 1),
    }


def _restore_environ(saved: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(saved)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--touched", type=int, default=200_000)
    parser.add_argument("--changed-percent", type=float, default=10.0)
    parser.add_argument("--latency-ms", type=float, default=150.0)
    parser.add_argument("--rounds", type=int, default=1, help="repeat both exports, alternating; medians reported")
    args = parser.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    from devstack.emulator.process import EmulatorAdmin
    from devstack.stack import LocalStack, project_conninfo

    root = ROOT / ".crm_export" / "bench"
    root.mkdir(parents=True, exist_ok=True)
    figures: dict[str, object] = {"rows": args.rows, "touched": args.touched, "changed_percent": args.changed_percent}
    runs: dict[str, list[dict[str, dict[str, float]]]] = {"without": [], "with": []}
    modes = (("without", "false"), ("with", "true"))
    for round_ in range(args.rounds):
        # Each export pair on its own PostgreSQL and emulator, started fresh: the emulator's heap after a million
        # records slowed whichever run came second (always "with", before), and every other round goes first.
        for name, skip_unchanged in modes if round_ % 2 == 0 else modes[::-1]:
            outside = dict(os.environ)  # the next stack starts its own servers only if this one's are not set
            with contextlib.ExitStack() as stack:
                stack.callback(_restore_environ, outside)
                env = stack.enter_context(LocalStack(root, project_database="bench_fingerprints"))
                os.environ.update(env)
                conninfo = project_conninfo()
                admin = EmulatorAdmin(_info(env))
                streams_file = bench_streams(
                    root / f"streams-fingerprints-{name}.yml", bulk_threshold=0, skip_unchanged=skip_unchanged
                )
                code_env = {**os.environ, "CRM_EXPORT_STREAMS_FILE": str(streams_file)}
                fresh_database(conninfo)
                admin.reset()
                subprocess.run(
                    [sys.executable, "-m", "include.crm_export", "migrate"], env=code_env, cwd=ROOT, check=True
                )
                fill_source(conninfo, args.rows)
                admin.set_timing(latency_ms=args.latency_ms, jitter_ms=args.latency_ms / 5, seed=7)
                first = export(ROOT, code_env, admin)
                touch(conninfo, args.touched, args.changed_percent)
                touched = export(ROOT, code_env, admin)
                runs[name].append({"first_export": first, "touched_export": touched})
                print(f"{name} fingerprints: first export {first}; touched export {touched}", flush=True)
                if name == "with":
                    figures["storage"] = storage(conninfo)
    for name, done in runs.items():
        figures[name] = {
            export_name: {
                figure: statistics.median(run[export_name][figure] for run in done) for figure in done[0][export_name]
            }
            for export_name in done[0]
        }
    with_, without = figures["with"], figures["without"]  # type: ignore[index]
    figures["touched_requests_percent"] = round(
        100 * with_["touched_export"]["requests"] / without["touched_export"]["requests"], 1
    )
    figures["first_export_slower_percent"] = round(
        100 * (with_["first_export"]["seconds"] / without["first_export"]["seconds"] - 1), 1
    )
    figures["first_export_seconds"] = {
        name: [run["first_export"]["seconds"] for run in done] for name, done in runs.items()
    }
    print(
        f"touched export: {figures['touched_requests_percent']}% of the requests without fingerprints (target <= 12%); "
        f"first export {figures['first_export_slower_percent']}% slower (target <= 5%); "
        f"storage {figures['storage']['mb_per_million']} MB per million fingerprints (target < 60)"  # type: ignore[index]
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
