"""A capture stream (``capture: logical``) at Salesforce-like latency: records/s, and commit to Salesforce.

    .venv/bin/python bench/capture.py [--rows 100000] [--changes 50000] [--latency-ms 150] [--singles 5]

Starts its own PostgreSQL (wal_level=logical) and emulator (stopped at the end, also on failure), fills
``crm.people`` with ``--rows`` rows, sets the stream up (``capture setup``) and, with the emulator answering
each request in ``--latency-ms``:

1. the first export: the read of the whole table (records/s);
2. ``--changes`` updates that touch no timestamp, then an export (records/s of changes);
3. ``--singles`` times: one row changed and committed, then a run started at once (as a scheduled run
   would start): seconds from the commit to the new value in Salesforce. The target (issue 23): under one
   run's interval plus a second, with no settle wait; a timestamp stream waits its settle window (30 s by
   default) on top;
4. every row updated in one transaction, and its changes moved into the change table by themselves: time and
   the mover's peak memory (a transaction is one peek however large: read through a server-side cursor).

Each export is ``python -m include.crm_export export`` as a fresh process, wall clock (its start-up included).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from export_throughput import _info  # noqa: E402

STREAM = {
    "source": "crm.people",
    "key": "id",
    "capture": "logical",
    "sobject": "Contact",
    "external_id": {"field": "CRM_Contact_Id__c", "column": "id"},
    "fields": {"LastName": "last_name", "Title": "title"},
}


def cli(env: dict[str, str], *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "include.crm_export", *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def export(env: dict[str, str]) -> dict[str, float]:
    seconds, out = cli(env, "export", "--stream", "people", "--pause-on-error", "true")
    sent = int(re.search(r"exported (\d+) record", out).group(1))  # type: ignore[union-attr]
    return {"seconds": round(seconds, 2), "sent": sent, "records_per_s": round(sent / seconds)}


MOVE = """
import sys, time, tracemalloc
from include.crm_export.config import load_streams
from include.crm_export.db import capture
from include.crm_export.db.connection import Database
stream = load_streams()["people"]
with Database().connect() as conn:
    tracemalloc.start()
    started = time.perf_counter()
    moved = capture.move_changes(conn, stream, "bigint")
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
print(moved, round(seconds, 2), round(peak / 1e6, 1))
"""


def move_alone(env: dict[str, str]) -> dict[str, float]:
    """The slot's changes moved into the change table by themselves (no export): time (under tracemalloc, so
    slower than in a run), and the most memory Python held for it (one transaction is one peek, however large:
    it is read through a server-side cursor)."""
    done = subprocess.run([sys.executable, "-c", MOVE], env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"moving the changes failed:\n{done.stderr[-3000:]}")
    moved, seconds, peak = done.stdout.split()[-3:]
    return {"changes": int(moved), "seconds_traced": float(seconds), "python_peak_mb": float(peak)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=50_000)
    parser.add_argument("--latency-ms", type=float, default=150.0)
    parser.add_argument("--singles", type=int, default=5)
    args = parser.parse_args()

    import psycopg

    from devstack.emulator.process import EmulatorAdmin
    from devstack.stack import LocalStack, project_conninfo

    root = ROOT / ".crm_export" / "bench"
    root.mkdir(parents=True, exist_ok=True)
    streams_file = root / "streams-capture.yml"
    limits = {"max_records_per_run": 100_000_000, "max_minutes_per_run": 600}
    streams_file.write_text(json.dumps({"defaults": limits, "streams": {"people": STREAM}}))
    figures: dict[str, object] = {"rows": args.rows, "changes": args.changes, "latency_ms": args.latency_ms}
    with LocalStack(root, project_database="bench_capture") as env:
        os.environ.update(env)
        env = {**os.environ, "CRM_EXPORT_STREAMS_FILE": str(streams_file)}
        admin = EmulatorAdmin(_info(env))
        admin.reset()
        with psycopg.connect(project_conninfo(), autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS crm_export CASCADE")
            conn.execute("DROP SCHEMA IF EXISTS crm CASCADE")
            for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE NOT active").fetchall():
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            conn.execute("DROP PUBLICATION IF EXISTS crm_export_people")
            conn.execute("CREATE SCHEMA crm")
            conn.execute("CREATE TABLE crm.people (id bigint PRIMARY KEY, last_name text NOT NULL, title text)")
            conn.execute(
                "INSERT INTO crm.people SELECT g, 'Person ' || g, 'Engineer' FROM generate_series(1, %s) g",
                (args.rows,),
            )
            cli(env, "migrate")
            cli(env, "capture", "setup", "--stream", "people")
            admin.set_timing(latency_ms=args.latency_ms, jitter_ms=args.latency_ms / 5, seed=7)

            figures["first_export"] = first = export(env)
            print(f"first export (the read of the table): {first}", flush=True)

            conn.execute("UPDATE crm.people SET title = 'Director' WHERE id <= %s", (args.changes,))
            figures["changes_export"] = changed = export(env)
            print(f"{args.changes} updates touching no timestamp: {changed}", flush=True)

            singles = []
            for n in range(args.singles):
                key = 1 + n * 7
                title = f"Single {n}"
                conn.execute("UPDATE crm.people SET title = %s WHERE id = %s", (title, key))
                committed = time.perf_counter()
                export(env)
                while not any(
                    r["CRM_Contact_Id__c"] == str(key) and r["Title"] == title for r in admin.records("Contact")
                ):
                    time.sleep(0.05)
                singles.append(round(time.perf_counter() - committed, 2))
            figures["commit_to_salesforce_seconds"] = singles
            print(f"one change, commit to Salesforce (a run started at the commit): {singles} s", flush=True)
            conn.execute("UPDATE crm.people SET title = 'Everyone'")  # every row, one transaction
            figures["one_transaction_move"] = moved = move_alone(env)
            print(f"one transaction of {args.rows} updates, moved into the change table alone: {moved}", flush=True)
            wal = conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots "
                "WHERE slot_name = 'crm_export_people'"
            ).fetchone()[0]
            figures["retained_wal_bytes_after"] = int(wal)
            cli(env, "capture", "drop", "--stream", "people")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
