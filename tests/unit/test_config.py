"""Stream configuration: the shipped file is valid, and broken ones say what is wrong and where."""

from __future__ import annotations

import copy
from collections import defaultdict

import pytest

from include.crm_export.config import load_streams, parse_config, stream_definition
from include.crm_export.errors import StreamConfigError

VALID = {
    "streams": {
        "contacts": {
            "source": "crm.contacts",
            "key": "id",
            "order_by": ["updated_at", "id"],
            "sobject": "Contact",
            "external_id": {"field": "CRM_Contact_Id__c", "column": "id"},
            "fields": {"LastName": "last_name"},
        }
    }
}


def broken(**changes):
    config = copy.deepcopy(VALID)
    for key, value in changes.items():
        if value is None:
            del config["streams"]["contacts"][key]
        else:
            config["streams"]["contacts"][key] = value
    return config


def test_shipped_streams_are_valid_and_cover_a_standard_and_a_custom_object():
    streams = load_streams()
    assert {s.sobject for s in streams.values()} == {"Account", "Contact", "Subscription__c"}
    for stream in streams.values():
        assert stream.batch_size <= 200
    # Parents first: each stream's lookups point at streams listed before it.
    assert list(streams) == ["accounts", "contacts", "subscriptions"]
    assert streams["contacts"].parent_streams == ("accounts",)
    assert streams["subscriptions"].parent_streams == ("contacts",)


def _lookup_config(**fields: object) -> dict:
    config = copy.deepcopy(VALID)
    config["streams"]["contacts"]["fields"].update(fields)
    config["streams"]["accounts"] = {
        "source": "crm.accounts",
        "key": "id",
        "order_by": ["updated_at", "id"],
        "sobject": "Account",
        "external_id": {"field": "CRM_Account_Id__c", "column": "id"},
        "fields": {"Name": "name"},
    }
    return config


def test_a_lookup_to_another_stream_takes_its_object_and_external_id_and_puts_it_first():
    streams = parse_config(_lookup_config(AccountId={"parent": "accounts", "column": "account_id"}))
    assert list(streams) == ["accounts", "contacts"]  # the file lists contacts first
    (lookup,) = streams["contacts"].lookups
    assert (lookup.field, lookup.column, lookup.object, lookup.external_id_field) == (
        "AccountId",
        "account_id",
        "Account",
        "CRM_Account_Id__c",
    )
    assert lookup.parent is streams["accounts"]
    assert "account_id" in streams["contacts"].source_columns
    # The lookup's target is part of what the watermark means: pointing it elsewhere is a mapping change.
    definition = stream_definition(streams["contacts"], defaultdict(lambda: "bigint"))
    assert ["AccountId", "account_id", "Account.CRM_Account_Id__c"] in definition["fields"]


def test_a_lookup_to_an_object_exported_elsewhere_needs_no_stream():
    streams = parse_config(
        _lookup_config(ReportsToId={"object": "Contact", "external_id": "Legacy_Id__c", "column": "manager"})
    )
    (lookup,) = streams["contacts"].lookups
    assert (lookup.object, lookup.external_id_field, lookup.parent) == ("Contact", "Legacy_Id__c", None)
    assert streams["contacts"].parent_streams == ()


@pytest.mark.parametrize(
    ("lookup", "says"),
    [
        ({"parent": "nope", "column": "a"}, "field 'fields.AccountId.parent': there is no stream 'nope'"),
        ({"object": "Account", "column": "a"}, "needs both object and external_id"),
        (
            {"parent": "accounts", "object": "Account", "external_id": "X__c", "column": "a"},
            "names its parent twice",
        ),
        ({"parent": "contacts", "column": "a"}, "field 'fields.AccountId.parent': points at its own stream"),
        (
            {"object": "contact", "external_id": "crm_contact_id__c", "column": "a"},
            "field 'fields.AccountId': points at its own stream",
        ),
        (
            {"object": "Account", "external_id": "CRM_Account_Id__c", "column": "a"},
            "Account by CRM_Account_Id__c is what stream 'accounts' exports: write {parent: accounts, column: a}",
        ),
    ],
)
def test_a_broken_lookup_is_refused_naming_it(lookup, says):
    with pytest.raises(StreamConfigError) as caught:
        parse_config(_lookup_config(AccountId=lookup))
    assert says in str(caught.value)


def test_a_parent_stream_on_another_org_is_refused():
    config = _lookup_config(AccountId={"parent": "accounts", "column": "account_id"})
    config["streams"]["accounts"]["connection"] = "salesforce_sandbox"
    with pytest.raises(StreamConfigError) as caught:
        parse_config(config)
    assert "stream 'accounts' writes to connection 'salesforce_sandbox', this stream to 'salesforce_default'" in str(
        caught.value
    )
    # The same object in another org is not this file's parent: named by object and external id, it is accepted.
    config["streams"]["contacts"]["fields"]["AccountId"] = {
        "object": "Account",
        "external_id": "CRM_Account_Id__c",
        "column": "account_id",
    }
    assert parse_config(config)["contacts"].parent_streams == ()


def test_a_cycle_of_lookups_is_refused_naming_every_stream_in_it():
    config = _lookup_config(AccountId={"parent": "accounts", "column": "account_id"})
    config["streams"]["accounts"]["fields"]["Primary_Contact__c"] = {"parent": "contacts", "column": "contact_id"}
    with pytest.raises(StreamConfigError) as caught:
        parse_config(config)
    assert "its lookups go round in a circle (contacts -> accounts -> contacts)" in str(caught.value)


def test_defaults_apply_and_can_be_overridden():
    config = copy.deepcopy(VALID)
    config["defaults"] = {"batch_size": 50}
    config["streams"]["contacts"]["settle_seconds"] = 0
    stream = parse_config(config)["contacts"]
    assert (stream.batch_size, stream.settle_seconds, stream.max_records_per_run) == (50, 0, 100_000)


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"source": "contacts"}, "source", "schema.table_or_view"),
        ({"source": "crm.contacts; drop table x"}, "source", "plain SQL identifier"),
        ({"key": None}, "key", "missing"),
        ({"order_by": ["updated_at"]}, "order_by", "must end with the key column"),
        ({"order_by": ["id"]}, "order_by", "change timestamp column first"),
        ({"order_by": "updated_at"}, "order_by", "must be a list"),
        ({"sobject": "Contact Object"}, "sobject", "not a Salesforce object API name"),
        ({"external_id": {"field": "CRM_Contact_Id__c"}}, "external_id", "must be {field"),
        ({"fields": {}}, "fields", "must map"),
        ({"fields": {"LastName": "last name"}}, "fields.LastName", "plain SQL identifier"),
        ({"fields": {"CRM_Contact_Id__c": "id"}}, "fields.CRM_Contact_Id__c", "mapped twice"),
        ({"batch_size": 500}, "batch_size", "at most 200"),
        ({"batch_size": "lots"}, "batch_size", "not a whole number"),
        ({"max_minutes_per_run": 0}, "max_minutes_per_run", "at least"),
        ({"bulk_job_records": 200_000}, "bulk_job_records", "at most 150000"),
        ({"bulk_job_megabytes": 150}, "bulk_job_megabytes", "at most 100"),
        ({"bulk_job_megabytes": 0}, "bulk_job_megabytes", "at least 1"),
        ({"colour": "blue"}, "colour", "unknown setting"),
        ({"fields": {"LastName": {"column": "last name"}}}, "fields.LastName", "plain SQL identifier"),
        ({"fields": {"Phone": {"column": "phone", "on_null": "skip"}}}, "fields.Phone.on_null", "'clear' or 'keep'"),
        ({"fields": {"Phone": 5}}, "fields.Phone", "must be a source column, or {column"),
        ({"fields": {"Phone": {"on_null": "keep"}}}, "fields", "must map"),
        ({"mode": "merge"}, "mode", "'upsert', 'update' or 'insert'"),
    ],
)
def test_broken_config_names_stream_and_field(changes, field, says):
    with pytest.raises(StreamConfigError) as raised:
        parse_config(broken(**changes))
    message = str(raised.value)
    assert f"stream 'contacts', field '{field}'" in message
    assert says in message


def test_two_streams_writing_the_same_target_are_refused():
    config = copy.deepcopy(VALID)
    config["streams"]["contacts_again"] = copy.deepcopy(config["streams"]["contacts"])
    with pytest.raises(StreamConfigError, match="same object and external id"):
        parse_config(config)


def test_unreadable_file(tmp_path):
    path = tmp_path / "streams.yml"
    path.write_text("streams: [unclosed")
    with pytest.raises(StreamConfigError, match="not valid YAML"):
        load_streams(path)
    with pytest.raises(StreamConfigError, match="Cannot read"):
        load_streams(tmp_path / "missing.yml")


def test_the_readme_settings_table_is_the_declaration():
    """Each setting is declared once (RunLimits); the README's table is made from it, not written beside it."""
    from pathlib import Path

    from include.crm_export.config import RunLimits, settings_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("<!-- settings-table -->\n", 1)[1].split("\n<!-- /settings-table -->", 1)[0]
    assert table == settings_table(), "README.md's settings table is stale: paste config.settings_table() into it"
    assert all(info.description for info in RunLimits.model_fields.values()), "every setting needs its help text"


def test_only_a_key_of_a_type_with_unique_text_forms_needs_no_external_id_check():
    from include.crm_export.config import external_ids_unique_by_key, load_streams

    stream = load_streams()["contacts"]  # external id column = key column (id)
    assert external_ids_unique_by_key(stream, {"id": "bigint"})
    assert external_ids_unique_by_key(stream, {"id": "uuid"})
    assert not external_ids_unique_by_key(stream, {"id": "text"})  # 'abc' and 'ABC' are one Salesforce record
    assert not external_ids_unique_by_key(stream, {"id": "citext"})
    assert not external_ids_unique_by_key(stream.model_copy(update={"external_id_column": "email"}), {"id": "bigint"})
