"""What a stream's task read and wrote, told to Airflow (an asset event) and to OpenLineage (datasets, counts).

Names (README "Lineage and assets"):

- The Airflow Asset of a Salesforce object is ``x-salesforce://<connection id>/<sObject>``: Airflow asks custom
  schemes to start with ``x-``, and the connection id is what an Airflow user knows when they schedule a DAG on it
  (the org behind a connection can change; the stream refuses to carry on when it does).
- OpenLineage input, per its naming spec for PostgreSQL: namespace ``postgres://<host>:<port>``, name
  ``<database>.<schema>.<table>``.
- OpenLineage output: namespace ``salesforce://<org id>`` (the 15-character id of the org, the same in every
  deployment that writes to it), name ``<sObject>``. The OpenLineage spec names no Salesforce scheme; this is ours.

A task declares an :class:`~airflow.sdk.AssetAlias` as its outlet and adds the Asset to it only when Salesforce was
changed (records exported or re-exported): an Asset outlet would get an event on every success, also the runs
that found nothing to do, and a DAG scheduled on the Asset would run every 15 minutes for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ASSET_SCHEME = "x-salesforce"
LINEAGE_NAMESPACE_SCHEME = "salesforce"


def salesforce_asset_uri(connection_id: str, sobject: str) -> str:
    """The Airflow Asset URI of ``sobject`` in the org of ``connection_id``."""
    return f"{ASSET_SCHEME}://{connection_id}/{sobject}"


def alias_name(asset_uri: str) -> str:
    """The task outlet's AssetAlias name; every task that writes to the Asset ``asset_uri`` shares it."""
    return f"crm-export: {asset_uri}"


@dataclass(frozen=True)
class Dataset:
    namespace: str
    name: str


@dataclass
class RunLineage:
    """One task's run: where it read, where it wrote, and how many records went which way."""

    source: Dataset
    target: Dataset | None  # None when the org was never reached (a dry run)
    asset_uri: str
    stream: str
    written: int  # records Salesforce accepted this run (exported or re-exported)
    rejected: int
    rejected_by_code: dict[str, int] = field(default_factory=dict)
    org_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # what else the run's summary says (held, stopped_because)

    def event_extra(self) -> dict[str, Any]:
        """The asset event's extra: small, JSON, and what a downstream DAG may want to read."""
        return {
            "stream": self.stream,
            "org_id": self.org_id,
            "written": self.written,
            "rejected": self.rejected,
            "rejected_by_code": dict(self.rejected_by_code),
            **self.extra,
        }


def source_dataset(host: str, port: int, database: str, schema: str, table: str) -> Dataset:
    return Dataset(namespace=f"postgres://{host}:{port}", name=f"{database}.{schema}.{table}")


def target_dataset(org_id: str | None, sobject: str) -> Dataset | None:
    return None if not org_id else Dataset(namespace=f"{LINEAGE_NAMESPACE_SCHEME}://{org_id}", name=sobject)


# The run the task in this process reported, read by the operator's OpenLineage methods when the task ends (the
# OpenLineage listener runs in the task's own process, after it). One task instance runs per process.
_reported: dict[tuple[str, str, str], RunLineage] = {}


def reported(dag_id: str, task_id: str, run_id: str) -> RunLineage | None:
    return _reported.get((dag_id, task_id, run_id))


def report(context: dict[str, Any], lineage: RunLineage) -> None:
    """Keep ``lineage`` for OpenLineage, and emit the Asset event when Salesforce was changed."""
    ti = context["ti"]
    _reported[(ti.dag_id, ti.task_id, ti.run_id)] = lineage
    if lineage.written > 0:
        from airflow.sdk import Asset, AssetAlias

        alias = AssetAlias(alias_name(lineage.asset_uri))
        context["outlet_events"][alias].add(Asset(lineage.asset_uri), extra=lineage.event_extra())


def openlineage(lineage: RunLineage | None) -> Any:
    """``lineage`` as the OpenLineage provider's ``OperatorLineage``: datasets with their record counts, and a run
    facet ``crmExport`` with the rejections by code. Imported only when the provider asks (it is installed then)."""
    import attr
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import InputDataset, OutputDataset
    from openlineage.client.facet_v2 import (
        RunFacet,
        input_statistics_input_dataset,
        output_statistics_output_dataset,
    )

    if lineage is None:  # the task failed before it knew what it read (bad settings, no connection)
        return OperatorLineage()

    @attr.define
    class CrmExportRunFacet(RunFacet):
        stream: str
        orgId: str | None  # OpenLineage facets are camelCase
        written: int
        rejected: int
        rejectedByCode: dict[str, int]
        summary: dict[str, Any]

    read = lineage.written + lineage.rejected
    inputs = [
        InputDataset(
            namespace=lineage.source.namespace,
            name=lineage.source.name,
            inputFacets={"inputStatistics": input_statistics_input_dataset.InputStatisticsInputDatasetFacet(read)},
        )
    ]
    outputs = []
    if lineage.target is not None:
        statistics = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(rowCount=lineage.written)
        outputs.append(
            OutputDataset(
                namespace=lineage.target.namespace,
                name=lineage.target.name,
                outputFacets={"outputStatistics": statistics},
            )
        )
    facet = CrmExportRunFacet(
        stream=lineage.stream,
        orgId=lineage.org_id,
        written=lineage.written,
        rejected=lineage.rejected,
        rejectedByCode=dict(lineage.rejected_by_code),
        summary=dict(lineage.extra),
    )
    return OperatorLineage(inputs=inputs, outputs=outputs, run_facets={"crmExport": facet})
