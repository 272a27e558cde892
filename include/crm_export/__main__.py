"""Local troubleshooting from the command line, against the configured connections.

    python -m include.crm_export export --stream contacts [--dry-run] [--pause-on-error true|false]
    python -m include.crm_export send --stream contacts --key 42 [--dry-run]
    python -m include.crm_export reexport --stream contacts [--error-code CODE] [--limit N] [--dry-run]
    python -m include.crm_export reposition --stream contacts (--from-start | --from-change-time TIME) [--yes]
    python -m include.crm_export migrate

``export`` runs one stream exactly as the CRMExport task does (same watermark,
same ExportErrors); ``--dry-run`` prints the next batch as the export would
read and map it, and sends nothing. ``send`` upserts one record by its source
key through the task's own reader and writer, and prints the exact request
and the exact Salesforce response; ``--dry-run`` prints the request only.
Connections come from Airflow (environment variables ``AIRFLOW_CONN_…`` or
the metadata database), as in the DAGs.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import socket
import sys
from datetime import UTC, datetime
from typing import Any

from include.crm_export import metrics
from include.crm_export.config import load_streams, stream_definition
from include.crm_export.db import capture, export_errors, fingerprints, source, watermarks
from include.crm_export.db.connection import Database
from include.crm_export.db.migrate import migrate
from include.crm_export.errors import CrmExportError
from include.crm_export.export import RunContext, export_stream, read_next_batch
from include.crm_export.mapping import map_row
from include.crm_export.names import CLI_DAG_ID, DEFAULT_REEXPORT_LIMIT, MAX_BATCH_SIZE
from include.crm_export.pause_variable import parse_pause_on_error
from include.crm_export.reexport import ReexportOptions, reexport_stream
from include.crm_export.salesforce import CollectionWriter, bulk_jobs_for, writer_for


def _print_json(label: str, value: object) -> None:
    print(f"{label}:\n{json.dumps(value, indent=2, default=str)}", flush=True)


def _print_exchange(method: str, path: str, body: dict[str, Any], answer: Any) -> None:
    print(f"{method} {path}")
    _print_json("request body", body)
    if isinstance(answer, dict) and "http_status" in answer:
        print(f"HTTP {answer['http_status']}")
        _print_json("response body", answer["body"])
    else:
        print("HTTP 200")
        _print_json("response body", answer)


def _cli_context() -> RunContext:
    return RunContext(CLI_DAG_ID, f"cli__{datetime.now(UTC).isoformat()}")


def cmd_export(args: argparse.Namespace) -> int:
    stream = load_streams()[args.stream]
    if args.dry_run:
        records = read_next_batch(stream, Database())
        print(f"Next batch of stream '{stream.name}': {len(records)} record(s)")
        for record in records:
            unchanged = " (unchanged: Salesforce holds it already, not sent)" if record.unchanged else ""
            _print_json(f"record {record.key}{unchanged}", record.payload or record.rejection)
        return 0
    if args.pause_on_error is not None:
        fixed = parse_pause_on_error(args.pause_on_error)

        def pause_on_error() -> bool:
            return fixed
    else:
        from include.crm_export.tasks import read_pause_on_error as pause_on_error
    writer = writer_for(stream)
    result = export_stream(
        stream,
        database=Database(),
        writer=writer,
        pause_on_error=pause_on_error,
        context=_cli_context(),
        bulk=bulk_jobs_for(stream, writer),
        force_bulk=args.bulk,
        resend_all=args.resend_all,
    )
    metrics.initialize_for_a_command()
    metrics.emit_run_metrics(result)
    print(result.summary())
    if result.held:
        print(result.held.message())
        return 2
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    stream = load_streams()[args.stream]
    with Database().connect(application_name=f"crm-export {stream.name} send") as conn:
        migrate(conn)
        rows = source.read_rows_by_key(conn, stream, [args.key], source.column_types(conn, stream))
        if not rows:
            print(f"No row with {stream.key} = {args.key} in {stream.source}.")
            return 1
        writer = None if args.dry_run else writer_for(stream, trace=_print_exchange)
        record = map_row(stream, rows[0], writer.field_types if writer else None)
        if record.payload is None:
            print(f"Record {record.key} cannot be sent: {record.why_not_sent().describe()}")
            return 1
        if writer is None:
            print(f"PATCH composite/sobjects/{stream.sobject}/{stream.external_id_field}")
            _print_json("request body", CollectionWriter.request_body([record.payload]))
            print("Dry run: nothing sent.")
            return 0
        writer.transient_retries = 0  # show Salesforce's first answer, as it is
        if record.external_id is not None:  # sent from here: what the export confirmed last no longer holds
            match = writer.match_key(record.external_id)
            fingerprints.forget_keys(conn, fingerprints.stream_number(conn, stream), [match])
        (outcome,) = writer.send([record])
        if outcome.rejection is not None:
            print(f"Rejected: {outcome.rejection.describe()}")
            return 1
        with conn.transaction():
            resolved = export_errors.resolve_errors(conn, stream, [record.key], resolved_by=CLI_DAG_ID)
        if resolved:
            print(f"Resolved the open ExportErrors row of record {record.key}.")
        return 0


def cmd_reexport(args: argparse.Namespace) -> int:
    stream = load_streams()[args.stream]
    options = ReexportOptions(
        error_codes=args.error_code or None, limit=args.limit, dry_run=args.dry_run, batch_size=args.batch_size
    )
    result = reexport_stream(
        stream,
        database=Database(),
        writer=None if args.dry_run else writer_for(stream),
        options=options,
        context=_cli_context(),
    )
    print(result.summary(datetime.now(UTC)))
    return 0


def cmd_reposition(args: argparse.Namespace) -> int:
    stream = load_streams()[args.stream]
    where = "from the start" if args.from_start else f"from rows changed at or after {args.from_change_time}"
    if not args.yes:
        answer = input(
            f"Re-export stream '{stream.name}' {where}? Its held record is released, and every record it reads is "
            "sent (none is skipped as unchanged). Type yes: "
        )
        if answer.strip().lower() != "yes":
            print("Nothing changed.")
            return 1
    with Database().connect(application_name=f"crm-export {stream.name} reposition") as conn:
        migrate(conn)
        types = source.column_types(conn, stream)
        done = watermarks.reposition(
            conn,
            stream,
            definition=stream_definition(stream, types),
            from_change_time=None if args.from_start else args.from_change_time,
            by=f"cli:{getpass.getuser()}@{socket.gethostname()}",
            reason=args.reason,
        )
    print(
        f"Stream '{stream.name}' re-positioned {where} (was {done['old_position']}); recorded as done by "
        f"{done['by']}. The next CRMExport run exports from there."
    )
    return 0


def _change_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time, e.g. 2026-01-01T00:00:00Z") from None
    return value


def cmd_migrate(args: argparse.Namespace) -> int:
    with Database().connect(application_name="crm-export migrate") as conn:
        applied = migrate(conn)
    print(f"Applied migrations: {applied or 'none (up to date)'}")
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    stream = load_streams()[args.stream]
    with Database().connect(application_name=f"crm-export {stream.name} capture") as conn:
        migrate(conn)
        done = capture.setup(conn, stream) if args.action == "setup" else capture.drop(conn, stream)
    print(f"Stream '{stream.name}': {done}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m include.crm_export", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="run one stream as the CRMExport task does")
    export.add_argument("--stream", required=True)
    export.add_argument("--dry-run", action="store_true", help="print the next batch's payloads; send nothing")
    export.add_argument("--pause-on-error", help="true/false; default: the Airflow Variable")
    export.add_argument(
        "--bulk", action="store_true", help="upsert through Bulk API 2.0 jobs, whatever the backlog (a backfill)"
    )
    export.add_argument(
        "--resend-all",
        action="store_true",
        help="send every record read, also those unchanged since Salesforce confirmed them (normally skipped)",
    )
    export.set_defaults(handler=cmd_export)
    send = sub.add_parser("send", help="upsert one record by source key and print the Salesforce response")
    send.add_argument("--stream", required=True)
    send.add_argument("--key", required=True)
    send.add_argument("--dry-run", action="store_true", help="print the request; send nothing")
    send.set_defaults(handler=cmd_send)
    reexport = sub.add_parser(
        "reexport", help="re-export open ExportErrors of one stream, as CRMExport_ExportError does"
    )
    reexport.add_argument("--stream", required=True)
    reexport.add_argument("--error-code", action="append", help="only this code (repeatable)")
    reexport.add_argument("--limit", type=int, default=DEFAULT_REEXPORT_LIMIT)
    reexport.add_argument(
        "--batch-size", type=int, default=MAX_BATCH_SIZE, help=f"records per request (at most {MAX_BATCH_SIZE})"
    )
    reexport.add_argument("--dry-run", action="store_true")
    reexport.set_defaults(handler=cmd_reexport)
    reposition = sub.add_parser(
        "reposition", help="re-export a stream from the start or from a change time (recorded, with who did it)"
    )
    reposition.add_argument("--stream", required=True)
    start = reposition.add_mutually_exclusive_group(required=True)
    start.add_argument("--from-start", action="store_true", help="re-export every row of the source")
    start.add_argument("--from-change-time", type=_change_time, help="re-export rows changed at or after this time")
    reposition.add_argument("--reason", help="why, for the audit log")
    reposition.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    reposition.set_defaults(handler=cmd_reposition)
    capture_parser = sub.add_parser(
        "capture", help="set up (or drop) a capture: logical stream's publication and replication slot"
    )
    capture_parser.add_argument("action", choices=["setup", "drop"])
    capture_parser.add_argument("--stream", required=True)
    capture_parser.set_defaults(handler=cmd_capture)
    migrate_parser = sub.add_parser("migrate", help="bring the crm_export schema up to date")
    migrate_parser.set_defaults(handler=cmd_migrate)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        handled: int = args.handler(args)
        return handled
    except KeyError as exc:
        print(f"Unknown stream {exc}; streams are: {', '.join(load_streams())}", file=sys.stderr)
        return 1
    except CrmExportError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
