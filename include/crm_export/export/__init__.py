"""The export of one stream (CRMExport), as named parts.

- ``session``: the run's session (connections, lock, definition check, reads,
  the one commit step) and :class:`ExportRun`, what a run's paths share;
- ``paths``: the interface both delivery paths fill in;
- ``collections_path``: sObject Collections requests, several in flight;
- ``bulk_path``: Bulk API 2.0 ingest jobs for a backfill;
- ``run``: :func:`export_stream`, the loop over a path's steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from include.crm_export.export.run import export_stream, read_next_batch
    from include.crm_export.export.session import (
        ExportRun,
        RunContext,
        StreamExport,
        covered_deletes,
        current_records,
        one_record_per_external_id,
    )

_WHERE = {
    "export_stream": "run",
    "read_next_batch": "run",
    "ExportRun": "session",
    "RunContext": "session",
    "StreamExport": "session",
    "covered_deletes": "session",
    "current_records": "session",
    "one_record_per_external_id": "session",
}

__all__ = [
    "ExportRun",
    "RunContext",
    "StreamExport",
    "covered_deletes",
    "current_records",
    "export_stream",
    "one_record_per_external_id",
    "read_next_batch",
]


def __getattr__(name: str) -> Any:
    # Imported when first used, so a pure part (``paths``) can be imported without the drivers.
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
