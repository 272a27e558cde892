"""Lineage and assets: what a stream's task read and wrote, where the rest of a data platform looks.

- An export or re-export that changed Salesforce emits an Asset event for ``x-salesforce://<connection>/<sObject>``
  with its counts; a run that found nothing to do emits none (the outlet is an AssetAlias, see lineage.py).
- With the OpenLineage provider configured (file transport), ``airflow dags test`` emits events whose input is
  the PostgreSQL table (``postgres://host:port``, ``database.schema.table``) and whose output is the object in the
  org (``salesforce://<org id>``, ``<sObject>``), with record counts as facets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg

from devstack.stack import PROJECT_ROOT
from tests.support.helpers import contacts_stream, insert_contacts, write_streams

CONTACT_ASSET = "x-salesforce://salesforce_default/Contact"
ORG = "00D000000000001"  # the emulator's org, as the stream stores it (15 characters)


def asset_events(uri: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetEvent.extra, AssetEvent.source_task_id, AssetEvent.source_run_id)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == uri)
            .order_by(AssetEvent.id)
        ).all()
    return [{"extra": extra, "task_id": task_id, "run_id": run_id} for extra, task_id, run_id in rows]


def test_an_export_that_changed_salesforce_emits_an_asset_event_with_its_counts(db, emulator, run_dag, tmp_path):
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    before = len(asset_events(CONTACT_ASSET))
    insert_contacts(db, 12)
    rule = emulator.add_rule(cause="validation_rule", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "5"})

    run = run_dag(streams_file=streams)
    assert run.state == "failed"  # held at record 5: a failed task emits no event
    assert len(asset_events(CONTACT_ASSET)) == before

    emulator.remove_rule(rule["id"])
    assert run_dag(streams_file=streams).state == "success"
    [event] = asset_events(CONTACT_ASSET)[before:]
    assert event["task_id"] == "export_contacts"
    assert event["extra"]["stream"] == "contacts"
    assert event["extra"]["written"] == 8  # records 5 to 12
    assert event["extra"]["rejected"] == 0
    assert event["extra"]["org_id"] == ORG

    assert run_dag(streams_file=streams).state == "success"  # nothing to do: no event
    assert len(asset_events(CONTACT_ASSET)) == before + 1


def test_openlineage_events_name_the_table_read_and_the_object_written(db, emulator, airflow_db, tmp_path):
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    insert_contacts(db, 30)
    emulator.add_rule(
        cause="validation_rule", when={"field": "CRM_Contact_Id__c", "op": "in", "value": ["3", "4"]}, message="No"
    )
    events = tmp_path / "openlineage.jsonl"
    env = {
        **os.environ,
        "CRM_EXPORT_STREAMS_FILE": str(streams),
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({"type": "file", "log_file_path": str(events), "append": True}),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "crm-export-test",
    }
    subprocess.run(
        [sys.executable, "-m", "airflow", "variables", "set", "crm_export_pause_on_error", "false"],
        env=env,
        check=True,
        capture_output=True,
    )
    try:
        test = subprocess.run(
            [sys.executable, "-m", "airflow", "dags", "test", "CRMExport"],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        subprocess.run(
            [sys.executable, "-m", "airflow", "variables", "delete", "crm_export_pause_on_error"],
            env=env,
            capture_output=True,
        )
    assert test.returncode == 0, test.stdout[-5000:] + test.stderr[-5000:]
    emitted = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    [complete] = [
        e for e in emitted if e["eventType"] == "COMPLETE" and e["job"]["name"] == "CRMExport.export_contacts"
    ]
    info = psycopg.conninfo.conninfo_to_dict(db.info.dsn)
    [source] = complete["inputs"]
    assert source["namespace"] == f"postgres://{info['host']}:{info['port']}"
    assert source["name"] == f"{info['dbname']}.crm.contacts"
    assert source["inputFacets"]["inputStatistics"]["rowCount"] == 30
    [target] = complete["outputs"]
    assert (target["namespace"], target["name"]) == (f"salesforce://{ORG}", "Contact")
    assert target["outputFacets"]["outputStatistics"]["rowCount"] == 28
    facet = complete["run"]["facets"]["crmExport"]
    assert (facet["stream"], facet["orgId"], facet["written"], facet["rejected"]) == ("contacts", ORG, 28, 2)
    assert facet["rejectedByCode"] == {"FIELD_CUSTOM_VALIDATION_EXCEPTION": 2}
