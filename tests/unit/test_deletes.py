"""Deletes (``deletes: {column: …}``): what marks a row deleted, how it is configured, what a refusal means and
how a batch counts it. Pure: no Salesforce, no database."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime

import pytest

from include.crm_export.batch import RecordOutcome, plan_batch
from include.crm_export.config import parse_config
from include.crm_export.deletes import delete_refusal
from include.crm_export.errors import RejectedRecord, StreamConfigError
from include.crm_export.fingerprints import payload_fingerprint, with_fingerprints
from include.crm_export.mapping import RECORD_KEY, map_row, marked_deleted
from tests.support.helpers import contacts_stream

CONFIG = {
    "streams": {
        "contacts": {
            **contacts_stream(fields={"LastName": "last_name", "Birthdate": "birthdate"}),
            "deletes": {"column": "deleted_at"},
        }
    }
}
NOW = datetime(2026, 12, 3, tzinfo=UTC)


def stream(**deletes):
    config = copy.deepcopy(CONFIG)
    if deletes:
        config["streams"]["contacts"]["deletes"] = deletes
    return parse_config(config)["contacts"]


def row(key, deleted_at=None, **values):
    return {
        "id": key,
        "updated_at": NOW,
        "last_name": "Lovelace",
        "birthdate": None,
        "deleted_at": deleted_at,
        RECORD_KEY: str(key),
        **values,
    }


@pytest.mark.parametrize(
    ("value", "deleted"),
    [(None, False), (NOW, True), (True, True), (False, False), ("2026-01-01", True), (0, True)],
)
def test_a_row_is_deleted_when_its_column_is_set_or_true(value, deleted):
    assert marked_deleted(value) is deleted


def test_a_stream_reads_its_deletes_column_and_a_deleted_row_carries_only_its_external_id():
    contacts = stream()
    assert contacts.deletes_column == "deleted_at"
    assert "deleted_at" in contacts.source_columns
    record = map_row(contacts, row(7, NOW, birthdate="not a date"))  # a deleted row's values are not looked at
    assert record.delete
    assert record.payload == {"attributes": {"type": "Contact"}, "CRM_Contact_Id__c": "7"}
    assert record.rejection is None
    assert not map_row(contacts, row(8)).delete


def test_a_deleted_row_without_its_external_id_is_a_rejected_record_as_any_other():
    contacts = parse_config(
        {
            "streams": {
                "contacts": {
                    **CONFIG["streams"]["contacts"],
                    "external_id": {"field": "CRM_Contact_Id__c", "column": "ext"},
                }
            }
        }
    )["contacts"]
    record = map_row(contacts, row(9, NOW, ext=None))
    assert record.payload is None
    assert record.rejection is not None


@pytest.mark.parametrize(
    ("deletes", "says"),
    [
        ({"column": "deleted at"}, "deletes.column"),
        ({"columns": "deleted_at"}, "deletes': must be {column: "),
        ({}, "deletes': must be {column: "),
        ("deleted_at", "deletes': must be {column: "),
    ],
)
def test_a_broken_deletes_setting_is_refused_naming_it(deletes, says):
    config = copy.deepcopy(CONFIG)
    config["streams"]["contacts"]["deletes"] = deletes
    with pytest.raises(StreamConfigError, match=re.escape(f"field '{says}")):
        parse_config(config)


def test_a_delete_has_its_own_fingerprint():
    payload = {"attributes": {"type": "Contact"}, "CRM_Contact_Id__c": "7"}
    assert payload_fingerprint(payload, delete=True) != payload_fingerprint(payload)
    contacts = stream()
    deleted = map_row(contacts, row(7, NOW))
    [marked] = with_fingerprints([deleted], {}, str.lower)
    assert marked.fingerprint == payload_fingerprint(deleted.payload, delete=True)
    [again] = with_fingerprints([deleted], {"7": marked.fingerprint}, str.lower)
    assert again.unchanged


def test_a_record_already_gone_counts_as_deleted_and_a_refusal_says_it_was_a_delete():
    contacts = stream()
    for code in ("ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY"):
        assert delete_refusal(contacts, "7", RejectedRecord(code, "gone")) is None
    refused = delete_refusal(contacts, "7", RejectedRecord("DELETE_FAILED", "it has cases", ("Id",)))
    assert refused is not None
    assert refused.code == "DELETE_FAILED"
    assert refused.fields == ("Id",)
    assert refused.message.startswith(
        "Salesforce refused to delete the Contact with CRM_Contact_Id__c = 7, whose source row is marked deleted "
        "(deleted_at): it has cases. Fix what"
    )


def test_a_batch_counts_its_deletes_apart_from_what_it_wrote():
    contacts = stream()
    written = map_row(contacts, row(1))
    deleted = map_row(contacts, row(2, NOW))
    refused = map_row(contacts, row(3, NOW))
    outcomes = [
        RecordOutcome(written, None),
        RecordOutcome(deleted, None),
        RecordOutcome(refused, RejectedRecord("DELETE_FAILED", "no")),
    ]
    plan = plan_batch(outcomes, pause_on_error=False)
    assert (plan.exported, plan.deleted, len(plan.rejected)) == (1, 1, 1)
    held = plan_batch(outcomes, pause_on_error=True)
    assert (held.exported, held.deleted, held.held[0].key) == (1, 1, "3")
