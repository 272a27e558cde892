"""The DAG folder as Airflow's DAG processor sees it."""

from __future__ import annotations

from datetime import timedelta

import pytest

from devstack.stack import PROJECT_ROOT
from include.crm_export.config import load_streams
from include.crm_export.names import STREAMS_SUCCEEDED_TASK_ID


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(str(PROJECT_ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_expected_dags_are_there(dagbag):
    assert set(dagbag.dag_ids) == {"CRMExport", "CRMExport_ExportError"}


def test_every_task_retries_request_level_failures(dagbag):
    for dag in dagbag.dags.values():
        for task in dag.tasks:
            if task.task_id == STREAMS_SUCCEEDED_TASK_ID:
                assert task.retries == 0  # it only reports what the stream tasks did: nothing to retry
                continue
            assert task.retries >= 1, f"{dag.dag_id}.{task.task_id} has no retries"
            assert task.retry_delay >= timedelta(minutes=1)


def test_crm_export_shape(dagbag):
    dag = dagbag.get_dag("CRMExport")
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert dag.is_paused_upon_creation is True
    assert dag.doc_md
    assert "crm_export_pause_on_error" in dag.doc_md
    assert "Clear" in dag.doc_md
    streams = load_streams()
    assert sorted(dag.task_ids) == sorted([STREAMS_SUCCEEDED_TASK_ID, *(s.task_id for s in streams.values())])
    assert {t.sobject for t in streams.values()} >= {"Contact", "Subscription__c"}
    for task in dag.tasks:
        assert task.execution_timeout is not None
    # Parents first: each lookup to another stream is an edge, and the last task follows every stream's.
    assert dag.get_task("export_contacts").upstream_task_ids == {"export_accounts"}
    assert dag.get_task("export_subscriptions").upstream_task_ids == {"export_contacts"}
    assert dag.get_task(STREAMS_SUCCEEDED_TASK_ID).upstream_task_ids == {s.task_id for s in streams.values()}


def test_crm_export_error_shape(dagbag):
    dag = dagbag.get_dag("CRMExport_ExportError")
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert dag.is_paused_upon_creation is True
    assert "source_deleted" in dag.doc_md
    assert set(dag.params.keys()) == {"streams", "error_codes", "limit", "dry_run"}
    assert sorted(dag.task_ids) == sorted([STREAMS_SUCCEEDED_TASK_ID, *(f"reexport_{name}" for name in load_streams())])
    assert dag.get_task("reexport_subscriptions").upstream_task_ids == {"reexport_contacts"}
