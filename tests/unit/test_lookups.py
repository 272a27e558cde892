"""Lookups as data: what a lookup's value becomes on each wire, and which rejections name a missing parent."""

from __future__ import annotations

from include.crm_export.bulk_csv import job_columns
from include.crm_export.config import parse_config
from include.crm_export.errors import PARENT_NOT_EXPORTED, RejectedRecord
from include.crm_export.mapping import map_row
from include.crm_export.parents import missing_parent
from include.crm_export.salesforce.describe import FieldTypes, Relationship
from include.crm_export.values import csv_row


def _streams():
    base = {"key": "id", "order_by": ["updated_at", "id"], "settle_seconds": 0}
    return parse_config(
        {
            "streams": {
                "tasks": {
                    **base,
                    "source": "crm.tasks",
                    "sobject": "Task",
                    "external_id": {"field": "CRM_Task_Id__c", "column": "id"},
                    "fields": {
                        "Subject": "subject",
                        "WhoId": {"parent": "contacts", "column": "contact_id"},
                        "WhatId": {"object": "Account", "external_id": "CRM_Account_Id__c", "column": "account"},
                    },
                },
                "contacts": {
                    **base,
                    "source": "crm.contacts",
                    "sobject": "Contact",
                    "external_id": {"field": "CRM_Contact_Id__c", "column": "id"},
                    "fields": {"LastName": "last_name"},
                },
            }
        }
    )


def _row(**values):
    return {"id": 1, "updated_at": None, "subject": "Call", "contact_id": 7, "account": "A-1", **values}


TYPES = FieldTypes(
    {"Subject": "string", "WhoId": "reference", "WhatId": "reference"},
    relationships={"WhoId": Relationship("Who", polymorphic=True), "WhatId": Relationship("What", polymorphic=True)},
)


def test_a_lookup_names_its_parent_by_external_id_under_the_relationship_from_describe():
    record = map_row(_streams()["tasks"], _row(), TYPES)
    assert record.payload == {
        "attributes": {"type": "Task"},
        "CRM_Task_Id__c": "1",
        "Subject": "Call",
        "Who": {"attributes": {"type": "Contact"}, "CRM_Contact_Id__c": "7"},
        "What": {"attributes": {"type": "Account"}, "CRM_Account_Id__c": "A-1"},
    }


def test_a_null_or_empty_parent_clears_the_lookup_field_itself():
    record = map_row(_streams()["tasks"], _row(contact_id=None, account="  "), TYPES)
    assert record.payload["WhoId"] is None
    assert record.payload["WhatId"] is None
    assert "Who" not in record.payload


def test_on_null_keep_leaves_a_lookup_alone_when_its_parent_column_is_null_or_empty():
    config = _streams()["tasks"]
    fields = {
        "Subject": "subject",
        "WhoId": {"parent": "contacts", "column": "contact_id", "on_null": "keep"},
        "WhatId": {"object": "Account", "external_id": "CRM_Account_Id__c", "column": "account", "on_null": "keep"},
    }
    raw = {
        "streams": {
            "tasks": {
                "key": "id",
                "order_by": ["updated_at", "id"],
                "source": config.source,
                "sobject": "Task",
                "external_id": {"field": "CRM_Task_Id__c", "column": "id"},
                "fields": fields,
            },
            "contacts": {
                "key": "id",
                "order_by": ["updated_at", "id"],
                "source": "crm.contacts",
                "sobject": "Contact",
                "external_id": {"field": "CRM_Contact_Id__c", "column": "id"},
                "fields": {"LastName": "last_name"},
            },
        }
    }
    record = map_row(parse_config(raw)["tasks"], _row(contact_id=None, account="  "), TYPES)
    for left_alone in ("WhoId", "Who", "WhatId", "What"):
        assert left_alone not in record.payload


def test_the_bulk_csv_has_the_field_to_clear_and_the_parent_by_external_id_each_row_fills_one():
    stream = _streams()["tasks"]
    columns = job_columns(stream, TYPES)
    # Polymorphic: the header names the object ("Relationship Fields in a Header Row (2.0)").
    assert columns == [
        "CRM_Task_Id__c",
        "Subject",
        "WhoId",
        "Contact:Who.CRM_Contact_Id__c",
        "WhatId",
        "Account:What.CRM_Account_Id__c",
    ]
    linked = map_row(stream, _row(), TYPES).payload
    cleared = map_row(stream, _row(contact_id=None), TYPES).payload
    assert csv_row(linked, columns) == "1,Call,,7,,A-1\n"
    assert csv_row(cleared, columns) == "1,Call,#N/A,,,A-1\n"


def test_without_describe_the_relationship_name_follows_salesforces_rule():
    stream = _streams()["tasks"]
    assert job_columns(stream, None)[3] == "Who.CRM_Contact_Id__c"
    assert "Who" in map_row(stream, _row()).payload


def test_only_a_foreign_key_refusal_for_one_of_the_streams_lookups_names_a_missing_parent():
    stream = _streams()["tasks"]
    found = missing_parent(
        stream,
        RejectedRecord(
            "INVALID_FIELD", "Foreign key external ID: 7 not found for field CRM_Contact_Id__c in entity Contact"
        ),
    )
    assert found is not None
    assert (found.lookup.field, found.external_id) == ("WhoId", "7")
    other_object = "Foreign key external ID: 7 not found for field CRM_Lead_Id__c in entity Lead"
    assert missing_parent(stream, RejectedRecord("INVALID_FIELD", other_object)) is None
    assert missing_parent(stream, RejectedRecord("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Title must be set")) is None
    assert missing_parent(stream, RejectedRecord(PARENT_NOT_EXPORTED, "Foreign key external ID: 7 …")) is None
