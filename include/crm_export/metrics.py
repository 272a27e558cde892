"""Run metrics through Airflow's own metrics interface (StatsD, Datadog or OpenTelemetry: whatever is configured).

Per run and stream: records exported, records unchanged (not sent), records in Salesforce already (insert
mode, not sent), records deleted, records rejected by
Salesforce error code, whether the stream is held, and how many source rows wait after its
watermark. The stream (and code) are part of the name, so plain StatsD keeps
them, and tags too, for backends that take tags. Metrics never fail a run.
"""

from __future__ import annotations

import logging

from include.crm_export.decisions import ExportResult
from include.crm_export.names import SCHEMA

log = logging.getLogger(__name__)


def emit_run_metrics(result: ExportResult) -> None:
    from airflow.sdk.observability.stats import Stats

    stream = result.stream
    tags = {"stream": stream}
    try:
        Stats.incr(f"{SCHEMA}.exported.{stream}", result.tally.exported, tags=tags)
        Stats.incr(f"{SCHEMA}.unchanged.{stream}", result.tally.unchanged, tags=tags)
        Stats.incr(f"{SCHEMA}.existing.{stream}", result.tally.existing, tags=tags)
        Stats.incr(f"{SCHEMA}.deleted.{stream}", result.tally.deleted, tags=tags)
        for code, count in result.tally.errors_by_code.items():
            Stats.incr(f"{SCHEMA}.rejected.{stream}.{code}", count, tags={**tags, "code": code})
        Stats.gauge(f"{SCHEMA}.held.{stream}", 1 if result.held is not None else 0, tags=tags)
        if result.lag is not None:
            Stats.gauge(f"{SCHEMA}.lag_rows.{stream}", result.lag.rows, tags=tags)
    except Exception as exc:  # metrics are for watching a run, never a reason to fail it
        log.warning("Could not emit the metrics of stream '%s': %s", stream, exc)


def initialize_for_a_command() -> None:
    """Outside a task (the CLI), set Airflow's metrics up as its task runner does."""
    from airflow.sdk.configuration import conf
    from airflow.sdk.observability import stats
    from airflow.sdk.observability.metrics import stats_utils

    stats.initialize(
        factory=stats_utils.get_stats_factory(),
        export_legacy_names=conf.getboolean("metrics", "legacy_names_on", fallback=False),
    )
