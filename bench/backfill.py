"""Backfill: 1,000,000 rows three ways, against the emulator.

    .venv/bin/python bench/backfill.py [--rows 1000000] [--latency-ms 150] [--bulk-records-per-second 10000]

Starts its own embedded PostgreSQL and Salesforce emulator (under
.crm_export/bench), fills crm.contacts, then upserts every row into an emptied
org three ways, each in its own process (so its peak RSS is its own):

- crm-export's Bulk API 2.0 path (``export_stream`` asked to use it);
- crm-export's sObject Collections path (its defaults, several requests in flight);
- a bare ``simple_salesforce`` ``bulk2`` upsert of the same rows, what a user
  would write by hand: the rows to a CSV file, ``sf.bulk2.Contact.upsert``.

Prints records/s, Salesforce API requests (the emulator's count) and peak RSS
of each; targets: the Bulk path within 1.15x the bare bulk2 wall time, at
least 30x fewer API requests than Collections, peak RSS under 300 MB. The last
line is the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from export_throughput import _info, bench_streams, fill_source, reset_state  # noqa: E402


def worker(kind: str) -> None:
    """Runs in a child process; prints {"seconds", "records", "peak_rss_mb"}."""
    from include.crm_export.config import load_streams
    from include.crm_export.salesforce import connect

    stream = load_streams()["contacts"]
    started = time.perf_counter()
    if kind == "bare":
        import psycopg
        from psycopg import sql

        from devstack.stack import project_conninfo
        from include.crm_export.mapping import map_row

        sf = connect()
        columns = [stream.external_id_field, *(field for field, _ in stream.fields)]
        query = sql.SQL("SELECT {} FROM crm.contacts ORDER BY updated_at, id").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in stream.source_columns)
        )
        with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False, newline="") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(columns)
            with psycopg.connect(project_conninfo()) as conn, conn.transaction():
                from psycopg.rows import dict_row

                with conn.cursor(name="bare", row_factory=dict_row) as cursor:
                    cursor.itersize = 5000
                    cursor.execute(query)
                    for row in cursor:
                        payload = map_row(stream, row).payload
                        writer.writerow(["" if payload.get(c) is None else payload.get(c) for c in columns])
        results = sf.bulk2.Contact.upsert(csv_file=out.name, external_id_field=stream.external_id_field, wait=0.5)
        os.unlink(out.name)
        records = sum(r["numberRecordsProcessed"] - r["numberRecordsFailed"] for r in results)
    else:
        from include.crm_export.db.connection import Database
        from include.crm_export.export import RunContext, export_stream
        from include.crm_export.salesforce import bulk_jobs_for, writer_for

        writer = writer_for(stream)
        result = export_stream(
            stream,
            database=Database(),
            writer=writer,
            pause_on_error=lambda: True,
            context=RunContext("bench", f"bench-{kind}"),
            bulk=bulk_jobs_for(stream, writer) if kind == "bulk" else None,
            force_bulk=kind == "bulk",
        )
        records = result.tally.exported
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "records": records, "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM: unlike ru_maxrss, not carried over from the parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="each request to the emulator takes this long (a real org's distance)",
    )
    parser.add_argument("--worker", choices=["bulk", "collections", "bare"])
    parser.add_argument(
        "--bulk-records-per-second",
        type=float,
        default=0.0,
        help="how fast the emulator processes a Bulk API 2.0 job (0: as fast as it can)",
    )
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return

    import logging

    import psycopg

    logging.basicConfig(level=logging.WARNING)
    from devstack.emulator.process import EmulatorAdmin
    from devstack.stack import LocalStack, project_conninfo
    from include.crm_export.db.migrate import migrate

    root = ROOT / ".crm_export" / "bench"
    root.mkdir(parents=True, exist_ok=True)
    streams_file = bench_streams(root / "streams-backfill.yml", bulk_threshold=0)
    with LocalStack(root, project_database="bench") as env:
        os.environ.update(env)
        conninfo = project_conninfo()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            migrate(conn)
        admin = EmulatorAdmin(_info(env))
        fill_source(conninfo, args.rows)
        figures: dict[str, dict] = {}
        for label, kind in (
            ("crm-export Bulk API 2.0", "bulk"),
            ("bare simple_salesforce bulk2", "bare"),
            ("crm-export sObject Collections", "collections"),
        ):
            reset_state(conninfo, admin)
            if args.latency_ms or args.bulk_records_per_second:
                admin.set_timing(latency_ms=args.latency_ms, bulk_records_per_second=args.bulk_records_per_second)
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute("TRUNCATE crm_export.bulk_jobs, crm_export.api_requests")
            before = admin.counters().get("api_requests", 0)
            out = subprocess.run(
                [sys.executable, __file__, "--worker", kind],
                env={**os.environ, "CRM_EXPORT_STREAMS_FILE": str(streams_file)},
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                raise SystemExit(f"{kind} failed:\n{out.stderr[-4000:]}")
            run = json.loads(out.stdout.strip().splitlines()[-1])
            if run["records"] != args.rows or admin.counters().get("records_created", 0) != args.rows:
                raise SystemExit(f"{kind} exported {run['records']} of {args.rows} rows")
            run["api_requests"] = admin.counters().get("api_requests", 0) - before
            run["records_per_s"] = round(args.rows / run["seconds"])
            figures[label] = run
            print(
                f"{label:32} {run['records_per_s']:8,} records/s  {run['seconds']:6.1f} s  "
                f"{run['api_requests']:6,} API requests  peak RSS {run['peak_rss_mb']} MB",
                flush=True,
            )
        ours, bare, collections = (
            figures["crm-export Bulk API 2.0"],
            figures["bare simple_salesforce bulk2"],
            figures["crm-export sObject Collections"],
        )
        summary = {
            "rows": args.rows,
            "latency_ms": args.latency_ms,
            "bulk_records_per_second": args.bulk_records_per_second,
            "runs": figures,
            "bulk_wall_time_ratio_to_bare_bulk2": round(ours["seconds"] / bare["seconds"], 3),
            "collections_requests_per_bulk_request": round(collections["api_requests"] / ours["api_requests"], 1),
        }
        print(
            f"Bulk path / bare bulk2 wall time: {summary['bulk_wall_time_ratio_to_bare_bulk2']} (target <= 1.15); "
            f"Collections used {summary['collections_requests_per_bulk_request']}x the Bulk path's API requests "
            "(target >= 30); peak RSS target < 300 MB",
            flush=True,
        )
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
