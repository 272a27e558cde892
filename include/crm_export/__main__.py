"""Local troubleshooting from the command line, against the configured connections.

    python -m include.crm_export export --stream contacts [--dry-run] [--pause-on-error true|false]
    python -m include.crm_export send --stream contacts --key 42 [--dry-run]
    python -m include.crm_export reexport --stream contacts [--error-code CODE] [--limit N] [--dry-run]
    python -m include.crm_export migrate

``export`` runs one stream exactly as the CRMExport task does (same watermark,
same ExportErrors). ``send`` upserts one record by its source key and prints
the exact payload and the exact Salesforce response; ``--dry-run`` prints the
payload and sends nothing. Connections come from Airflow (environment
variables ``AIRFLOW_CONN_…`` or the metadata database), as in the DAGs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime

from include.crm_export.config import load_streams
from include.crm_export.db import store
from include.crm_export.db.connection import POSTGRES_CONN_ID, connect, conninfo_for
from include.crm_export.db.migrate import migrate
from include.crm_export.errors import CrmExportError
from include.crm_export.export import RunContext, export_stream
from include.crm_export.mapping import map_row
from include.crm_export.salesforce import SALESFORCE_CONN_ID, writer_for
from include.crm_export.salesforce import connect as connect_salesforce
from include.crm_export.settings import parse_pause_on_error

CLI_DAG_ID = "cli"


def _print_json(label: str, value: object) -> None:
    print(f"{label}:\n{json.dumps(value, indent=2, default=str)}", flush=True)


def cmd_export(args: argparse.Namespace) -> int:
    stream = load_streams()[args.stream]
    conninfo = conninfo_for(POSTGRES_CONN_ID)
    if args.dry_run:
        with connect(conninfo, application_name=f"crm-export {stream.name} dry run") as conn:
            migrate(conn)
            types = store.source_column_types(conn, stream)
            watermark = store.load_watermark(conn, stream)
            horizon = store.export_horizon(conn, stream)
            rows = store.read_batch(
                conn, stream, after=watermark.position, horizon=horizon.at, column_types=types, limit=stream.batch_size
            )
            print(f"Next batch of stream '{stream.name}' after {watermark.position}: {len(rows)} record(s)")
            for row in rows:
                record = map_row(stream, row)
                _print_json(f"record {record.key}", record.payload or record.rejection)
            return 0
    if args.pause_on_error is not None:
        pause = parse_pause_on_error(args.pause_on_error)

        def pause_setting() -> bool:
            return pause
    else:
        from include.crm_export.tasks import read_pause_on_error as pause_setting
    writer = writer_for(stream)
    run_id = f"cli__{datetime.now(UTC).isoformat()}"
    result = export_stream(
        stream, conninfo=conninfo, writer=writer, pause_on_error=pause_setting, context=RunContext(CLI_DAG_ID, run_id)
    )
    print(result.summary())
    if result.held:
        print(result.held.message())
        return 2
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    stream = load_streams()[args.stream]
    with connect(conninfo_for(POSTGRES_CONN_ID)) as conn:
        migrate(conn)
        types = store.source_column_types(conn, stream)
        rows = store.read_rows_by_key(conn, stream, [args.key], types)
        if not rows:
            print(f"No row with {stream.key} = {args.key} in {stream.source}.")
            return 1
        record = map_row(stream, rows[0])
        if record.payload is None:
            print(f"Record {record.key} cannot be sent: {record.rejection.describe()}")
            return 1
        path = f"composite/sobjects/{stream.sobject}/{stream.external_id_field}"
        body = {"allOrNone": False, "records": [record.payload]}
        print(f"PATCH {path}")
        _print_json("request body", body)
        if args.dry_run:
            print("Dry run: nothing sent.")
            return 0
        sf = connect_salesforce(SALESFORCE_CONN_ID)
        response = sf.session.patch(f"{sf.base_url}{path}", json=body, headers=sf.headers)
        print(f"HTTP {response.status_code}")
        try:
            answer = response.json()
        except ValueError:
            print(response.text)
            return 1
        _print_json("response body", answer)
        if response.status_code == 200 and isinstance(answer, list) and answer and answer[0].get("success"):
            with conn.transaction():
                resolved = store.resolve_errors(conn, stream, [record.key], resolved_by=CLI_DAG_ID)
            if resolved:
                print(f"Resolved the open ExportErrors row of record {record.key}.")
            return 0
        return 1


def cmd_reexport(args: argparse.Namespace) -> int:
    from include.crm_export.reexport import ReexportOptions, reexport_stream

    stream = load_streams()[args.stream]
    options = ReexportOptions(
        error_codes=args.error_code or None, limit=args.limit, dry_run=args.dry_run, batch_size=args.batch_size
    )
    writer = None
    if not args.dry_run:
        writer = writer_for(stream)
    result = reexport_stream(
        stream,
        conninfo=conninfo_for(POSTGRES_CONN_ID),
        writer=writer,
        options=options,
        dag_id=CLI_DAG_ID,
        run_id=f"cli__{datetime.now(UTC).isoformat()}",
    )
    print(result.summary(datetime.now(UTC)))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    with connect(conninfo_for(POSTGRES_CONN_ID)) as conn:
        applied = migrate(conn)
    print(f"Applied migrations: {applied or 'none (up to date)'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m include.crm_export", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="run one stream as the CRMExport task does")
    export.add_argument("--stream", required=True)
    export.add_argument("--dry-run", action="store_true", help="print the next batch's payloads; send nothing")
    export.add_argument("--pause-on-error", help="true/false; default: the Airflow Variable")
    export.set_defaults(handler=cmd_export)
    send = sub.add_parser("send", help="upsert one record by source key and print the Salesforce response")
    send.add_argument("--stream", required=True)
    send.add_argument("--key", required=True)
    send.add_argument("--dry-run", action="store_true", help="print the payload; send nothing")
    send.set_defaults(handler=cmd_send)
    reexport = sub.add_parser(
        "reexport", help="re-export open ExportErrors of one stream, as CRMExport_ExportError does"
    )
    reexport.add_argument("--stream", required=True)
    reexport.add_argument("--error-code", action="append", help="only this code (repeatable)")
    reexport.add_argument("--limit", type=int, default=50_000)
    reexport.add_argument("--batch-size", type=int, default=200, help="records per request (at most 200)")
    reexport.add_argument("--dry-run", action="store_true")
    reexport.set_defaults(handler=cmd_reexport)
    migrate_parser = sub.add_parser("migrate", help="bring the crm_export schema up to date")
    migrate_parser.set_defaults(handler=cmd_migrate)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return args.handler(args)
    except KeyError as exc:
        print(f"Unknown stream {exc}; streams are: {', '.join(load_streams())}", file=sys.stderr)
        return 1
    except CrmExportError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
