"""``assignment_rules``: whether Salesforce's Lead and Case assignment rules decide the owner of what we write.

REST runs the object's active rule unless ``Sforce-Auto-Assign: FALSE`` ("Assignment Rule Header", REST API
Developer Guide); a Bulk API 2.0 job runs only the rule it names (``assignmentRuleId``, "Create a Job"). Either
path, a stream gets the same owners: with ``assignment_rules: false`` the owner the source sets sticks; with the
default the org's active rule decides, also for a backfill through Bulk API 2.0.
"""

from __future__ import annotations

import pytest

from tests.support.helpers import write_streams

SOURCE_OWNER = "005000000000002AAA"
RULE_OWNER = "005000000000009AAA"


def leads_stream(**overrides):
    return {
        "source": "crm_test.leads",
        "key": "id",
        "order_by": ["updated_at", "id"],
        "sobject": "Lead",
        "external_id": {"field": "CRM_Lead_Id__c", "column": "id"},
        "fields": {"LastName": "last_name", "Company": "company", "OwnerId": "owner_id"},
        "settle_seconds": 0,
        **overrides,
    }


@pytest.fixture
def leads(db):
    db.execute("CREATE SCHEMA crm_test")
    db.execute(
        """CREATE TABLE crm_test.leads (
               id bigint PRIMARY KEY, last_name text NOT NULL, company text NOT NULL, owner_id text,
               updated_at timestamptz NOT NULL DEFAULT now() - interval '1 minute')"""
    )
    db.execute(
        "INSERT INTO crm_test.leads (id, last_name, company, owner_id) "
        "SELECT g, 'Lead ' || g, 'Company ' || g, %s FROM generate_series(1, 20) g",
        (SOURCE_OWNER,),
    )
    return db


@pytest.mark.parametrize("path", ["sObject Collections", "Bulk API 2.0"])
@pytest.mark.parametrize(("assignment_rules", "owner"), [(True, RULE_OWNER), (False, SOURCE_OWNER)])
def test_the_owner_is_the_rules_or_the_sources_as_the_stream_says_on_either_path(
    leads, emulator, run_dag, tmp_path, path, assignment_rules, owner
):
    emulator.add_assignment_rule("Lead", "005000000000008AAA", active=False)  # an inactive rule never runs
    emulator.add_assignment_rule("Lead", RULE_OWNER)
    settings = {} if assignment_rules else {"assignment_rules": False}
    streams = write_streams(tmp_path / "s.yml", {"leads": leads_stream(**settings)})

    run = run_dag(streams_file=streams, conf={"use_bulk_api": path == "Bulk API 2.0"})

    assert run.state == "success", run.log[-3000:]
    records = emulator.records("Lead")
    assert len(records) == 20
    assert {r["OwnerId"] for r in records} == {owner}
    assert emulator.counters().get("bulk.jobs_created", 0) == (1 if path == "Bulk API 2.0" else 0)


def test_a_stream_setting_assignment_rules_to_anything_but_true_or_false_is_refused(tmp_path):
    from include.crm_export.config import load_streams
    from include.crm_export.errors import StreamConfigError

    streams = write_streams(tmp_path / "s.yml", {"leads": leads_stream(assignment_rules="no")})
    with pytest.raises(StreamConfigError, match="assignment_rules"):
        load_streams(streams)
