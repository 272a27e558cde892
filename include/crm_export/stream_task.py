"""``@stream_task``: Airflow's ``@task`` for a stream's task in either DAG, with its lineage.

The operator is Airflow's decorated Python operator plus the two methods the OpenLineage provider documents for
an operator to give its inputs, outputs and facets (``get_openlineage_facets_on_complete`` and
``..._on_failure``); they read what the task body reported (:func:`include.crm_export.lineage.report`). The
outlet is the stream's AssetAlias (see :mod:`include.crm_export.lineage` for why an alias). Imported at parse time:
Airflow and nothing else.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.decorators.python import _PythonDecoratedOperator
from airflow.sdk import AssetAlias, task
from airflow.sdk.bases.decorator import task_decorator_factory
from airflow.sdk.exceptions import AirflowFailException

from include.crm_export import lineage
from include.crm_export.config import Stream
from include.crm_export.names import STREAMS_SUCCEEDED_TASK_ID


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
    re-exports parents' errors before their children's).

    Airflow decides a run's state by its leaf tasks only, so a held parent whose child ran anyway (``all_done``)
    would leave a green run. Where there is such an edge, one more task, downstream of every stream's task, fails
    when any of them failed (and succeeds otherwise): the run stays red, and the stream task keeps the message.
    """
    edges = [(tasks[parent], tasks[name]) for name, stream in streams.items() for parent in stream.parent_streams]
    for parent_task, child_task in edges:
        parent_task >> child_task
    if edges:
        list(tasks.values()) >> _all_streams_succeeded()


@task(task_id=STREAMS_SUCCEEDED_TASK_ID, trigger_rule="all_done", retries=0, execution_timeout=timedelta(minutes=5))
def _all_streams_succeeded(**context: Any) -> None:
    """Once every stream's task is done: fails when one of them failed, so the run is red, and names it."""
    ti = context["ti"]
    upstream = sorted(context["task"].upstream_task_ids)
    states = ti.get_task_states(dag_id=ti.dag_id, task_ids=upstream, run_ids=[ti.run_id])
    failed = sorted(
        {
            task_id
            for by_task in states.values()
            for task_id, state in by_task.items()
            if state in ("failed", "upstream_failed")
        }
    )
    if not failed:
        return
    raise AirflowFailException(
        f"Failed in this run: {', '.join(failed)}. Its log and message say what to fix. Once "
        "fixed, clear that task together with its downstream tasks (this one included); a stream's task runs "
        "after its parents' and also when one of them failed, so records that do not need the parent go on."
    )
