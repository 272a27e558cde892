"""``@stream_task``: Airflow's ``@task`` for a stream's task in either DAG, with its lineage.

The operator is Airflow's decorated Python operator plus the two methods the OpenLineage provider documents for
an operator to give its inputs, outputs and facets (``get_openlineage_facets_on_complete`` and
``..._on_failure``); they read what the task body reported (:func:`include.crm_export.lineage.report`). The
outlet is the stream's AssetAlias (see :mod:`include.crm_export.lineage` for why an alias). Imported at parse time:
Airflow and nothing else.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.decorators.python import _PythonDecoratedOperator
from airflow.sdk import AssetAlias
from airflow.sdk.bases.decorator import task_decorator_factory

from include.crm_export import lineage
from include.crm_export.config import Stream


class StreamTaskOperator(_PythonDecoratedOperator):
    """A stream's task: what ``@task`` makes, and its OpenLineage datasets."""

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return lineage.openlineage(lineage.reported(task_instance.dag_id, task_instance.task_id, task_instance.run_id))

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        # A held stream fails its task; what it exported before the hold is lineage all the same.
        return self.get_openlineage_facets_on_complete(task_instance)


def stream_task(stream: Stream, **kwargs: Any) -> Any:
    """The decorator for ``stream``'s task: ``@task(**kwargs)`` with the stream's outlet.

    A stream with parents (lookups to other streams) runs after their tasks, also when one failed or was held
    (``all_done``): only its records whose parent is missing wait, and they say so (:mod:`parents`).
    """
    outlet = AssetAlias(lineage.alias_name(lineage.salesforce_asset_uri(stream.connection, stream.sobject)))
    if stream.parent_streams:
        kwargs.setdefault("trigger_rule", "all_done")
    return task_decorator_factory(decorated_operator_class=StreamTaskOperator, outlets=[outlet], **kwargs)


def run_parents_first(streams: dict[str, Stream], tasks: dict[str, Any]) -> None:
    """Each stream's task downstream of its parents' tasks (both DAGs: the export, and the re-export, which
    re-exports parents' errors before their children's)."""
    for name, stream in streams.items():
        for parent in stream.parent_streams:
            tasks[parent] >> tasks[name]
