"""Emulator logic without the network: binding, record errors, rules, SOQL."""

from __future__ import annotations

import pytest

from devstack.emulator import soql
from devstack.emulator.org import Org
from devstack.emulator.rules import Condition, Fault, RuleError, parse_rule
from devstack.emulator.schema import RequestRejected, load_objects


@pytest.fixture
def org() -> Org:
    return Org(access_token="t", client_id="c", client_secret="s")


def record(key: str, **fields):
    return {"attributes": {"type": "Contact"}, "CRM_Contact_Id__c": key, "LastName": "L", **fields}


def test_shipped_objects_have_an_external_id_field():
    objects = load_objects()
    assert {"Contact", "Subscription__c"} <= set(objects)
    for schema in objects.values():
        assert any(f.external_id for f in schema.fields.values()), schema.name


def test_field_names_are_case_insensitive(org):
    results = org.upsert("Contact", "crm_contact_id__c", {"records": [record("a", firstname="Ada")]})
    assert results[0]["success"] is True
    assert org.snapshot("Contact")[0]["FirstName"] == "Ada"


def test_update_may_omit_required_fields_but_not_blank_them(org):
    org.upsert("Contact", "CRM_Contact_Id__c", {"records": [record("a")]})
    partial = {"attributes": {"type": "Contact"}, "CRM_Contact_Id__c": "a", "Title": "CTO"}
    assert org.upsert("Contact", "CRM_Contact_Id__c", {"records": [partial]})[0]["success"] is True
    blanked = {**partial, "LastName": None}
    errors = org.upsert("Contact", "CRM_Contact_Id__c", {"records": [blanked]})[0]["errors"]
    assert errors[0]["statusCode"] == "REQUIRED_FIELD_MISSING"


def test_read_only_fields_are_refused_per_record(org):
    result = org.upsert("Contact", "CRM_Contact_Id__c", {"records": [record("a", CreatedDate="2024-01-01T00:00:00Z")]})
    assert result[0]["errors"][0]["statusCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"


def test_missing_external_id_value(org):
    result = org.upsert(
        "Contact", "CRM_Contact_Id__c", {"records": [{"attributes": {"type": "Contact"}, "LastName": "L"}]}
    )
    assert result[0]["errors"][0]["statusCode"] == "MISSING_ARGUMENT"


def test_record_of_another_type_rejects_the_request(org):
    with pytest.raises(RequestRejected) as raised:
        org.upsert("Contact", "CRM_Contact_Id__c", {"records": [{"attributes": {"type": "Lead"}, "LastName": "L"}]})
    assert raised.value.status == 400


def test_numbers_accept_numeric_strings_but_not_words(org):
    ok = {"attributes": {"type": "Subscription__c"}, "CRM_Subscription_Id__c": "s", "Name": "n", "Seats__c": "12"}
    assert org.upsert("Subscription__c", "CRM_Subscription_Id__c", {"records": [ok]})[0]["success"] is True
    with pytest.raises(RequestRejected) as raised:
        org.upsert("Subscription__c", "CRM_Subscription_Id__c", {"records": [{**ok, "Seats__c": "twelve"}]})
    assert raised.value.error_code == "JSON_PARSER_ERROR"


@pytest.mark.parametrize(
    ("op", "value", "actual", "expected"),
    [
        ("eq", "x", "x", True),
        ("ne", "x", "x", False),
        ("in", ["a", "b"], "b", True),
        ("contains", "bad", "so bad", True),
        ("startswith", "VIP", "VIP-1", True),
        ("endswith", ".example", "a@b.example", True),
        ("regex", r"^\d+$", "123", True),
        ("is_null", None, None, True),
        ("not_null", None, None, False),
        ("endswith", "x", None, False),
    ],
)
def test_conditions(op, value, actual, expected):
    assert Condition.parse({"field": "F", "op": op, "value": value}).matches({"F": actual}) is expected


def test_rule_validation():
    with pytest.raises(RuleError):
        parse_rule({"cause": "validation_rule", "times": 0})
    with pytest.raises(RuleError):
        parse_rule({"cause": "validation_rule", "when": {"op": "eq", "value": 1}})
    with pytest.raises(RuleError):
        parse_rule({"nothing": True})
    named = parse_rule({"cause": "validation_rule", "name": "No_CEO"})
    assert named.message.startswith("No_CEO: ")


def test_fault_skip_and_times_count_matching_requests_only():
    fault = parse_rule({"fault": "http_503", "path": "composite", "skip": 1, "times": 2})
    assert isinstance(fault, Fault)
    fired = [
        fault.applies("PATCH", p)
        for p in ["/x/describe", "/composite/a", "/composite/b", "/composite/c", "/composite/d"]
    ]
    assert fired == [False, False, True, True, False]


def test_access_is_checked_before_validation_rules(org):
    org.add_rule({"cause": "validation_rule"})
    org.add_rule({"cause": "no_access"})
    errors = org.upsert("Contact", "CRM_Contact_Id__c", {"records": [record("a")]})[0]["errors"]
    assert [e["statusCode"] for e in errors] == ["INSUFFICIENT_ACCESS_OR_READONLY"]


def test_soql_parsing():
    parsed = soql.parse(
        "SELECT Id, Name FROM Contact WHERE Email LIKE '%@x.io' AND Seats__c >= 3 ORDER BY Name DESC LIMIT 5"
    )
    assert parsed.fields == ("Id", "Name")
    assert parsed.conditions == (("Email", "like", "%@x.io"), ("Seats__c", ">=", 3))
    assert parsed.descending
    assert parsed.limit == 5
    assert soql.parse("select count() from Contact").count_only
    assert soql.parse("SELECT Id FROM Contact WHERE Name IN ('a', 'b')").conditions == (("Name", "in", ["a", "b"]),)
    assert soql.parse("SELECT Id FROM Contact WHERE Name = 'O\\'Brien'").conditions == (("Name", "=", "O'Brien"),)
    with pytest.raises(RequestRejected):
        soql.parse("DELETE FROM Contact")


def lead(key: str, owner: str = "005000000000002AAA"):
    return {"attributes": {"type": "Lead"}, "CRM_Lead_Id__c": key, "LastName": "L", "Company": "C", "OwnerId": owner}


@pytest.mark.parametrize(
    ("header", "created_owner", "updated_owner"),
    [
        (None, "005000000000009AAA", "005000000000009AAA"),  # absent: TRUE, the active rule runs
        ("true", "005000000000009AAA", "005000000000009AAA"),  # TRUE and FALSE are not case-sensitive
        ("FALSE", "005000000000002AAA", "005000000000002AAA"),
        ("False", "005000000000002AAA", "005000000000002AAA"),
    ],
)
def test_the_assignment_rule_header_as_the_rest_api_guide_has_it(org, header, created_owner, updated_owner):
    """REST API Developer Guide, "Assignment Rule Header": the active rule runs on created and updated records
    unless the header says FALSE."""
    org.add_assignment_rule("Lead", "005000000000009AAA")
    [created] = org.upsert(
        "Lead", "CRM_Lead_Id__c", {"records": [lead("1")]}, assign=org.rest_assignment("Lead", header)
    )
    assert org.get_by_id("Lead", created["id"])["OwnerId"] == created_owner
    org.upsert("Lead", "CRM_Lead_Id__c", {"records": [lead("1")]}, assign=org.rest_assignment("Lead", header))
    assert org.get_by_id("Lead", created["id"])["OwnerId"] == updated_owner


def test_a_named_rule_runs_on_created_records_only_and_an_unknown_one_is_malformed(org):
    inactive = org.add_assignment_rule("Lead", "005000000000007AAA", active=False)
    [created] = org.upsert("Lead", "CRM_Lead_Id__c", {"records": [lead("1")]}, assign=org.rest_assignment("Lead", None))
    assert org.get_by_id("Lead", created["id"])["OwnerId"] == "005000000000002AAA"  # no active rule: none runs
    org.upsert("Lead", "CRM_Lead_Id__c", {"records": [lead("1")]}, assign=org.rest_assignment("Lead", inactive.id))
    assert org.get_by_id("Lead", created["id"])["OwnerId"] == "005000000000002AAA"  # an update: not reassigned
    [other] = org.upsert(
        "Lead", "CRM_Lead_Id__c", {"records": [lead("2")]}, assign=org.rest_assignment("Lead", inactive.id)
    )
    assert org.get_by_id("Lead", other["id"])["OwnerId"] == "005000000000007AAA"
    with pytest.raises(RequestRejected, match="invalid assignment rule id"):
        org.rest_assignment("Lead", "01Q000000000099AAA")
    assert org.bulk_assignment(None).rule is None  # Bulk API 2.0 without assignmentRuleId: no rule runs


def test_deleting_an_account_takes_its_contacts_and_clears_lookups_that_do_not_cascade(org):
    """Salesforce Help, "Delete Accounts": an account's contacts go with it (describe: Contact.AccountId has
    cascadeDelete). A custom lookup keeps its record and is cleared ("Lookup Relationship Options")."""
    account = {"attributes": {"type": "Account"}, "CRM_Account_Id__c": "A1", "Name": "Acme"}
    [saved] = org.upsert("Account", "CRM_Account_Id__c", {"records": [account]})
    parent = {"attributes": {"type": "Account"}, "CRM_Account_Id__c": "A1"}
    org.upsert("Contact", "CRM_Contact_Id__c", {"records": [record("c1", Account=parent)]})
    subscription = {
        "attributes": {"type": "Subscription__c"},
        "CRM_Subscription_Id__c": "s1",
        "Name": "S1",
        "Contact__r": {"attributes": {"type": "Contact"}, "CRM_Contact_Id__c": "c1"},
    }
    [kept] = org.upsert("Subscription__c", "CRM_Subscription_Id__c", {"records": [subscription]})
    assert kept["success"], kept

    assert org.delete_record("Account", saved["id"]) == {"lookups_cleared": 1, "children_deleted": 1}
    assert org.records["Contact"] == {}
    assert org.records["Subscription__c"][kept["id"]]["Contact__c"] is None
    described = {f["name"]: f for f in org.schema("Contact").describe("62.0")["fields"]}
    assert described["AccountId"]["cascadeDelete"] is True


def test_a_delete_rule_says_so_and_a_save_rule_never_refuses_a_delete():
    with pytest.raises(RuleError, match="applies to deletes only"):
        parse_rule({"cause": "delete_blocked"})
    with pytest.raises(RuleError, match="'on' must be one of"):
        parse_rule({"cause": "no_access", "on": "update"})
    blocked = parse_rule({"cause": "delete_blocked", "on": "delete"})
    assert blocked.as_json()["on"] == "delete"
    assert blocked.check("Contact", "k", {}, "003x", "save") is None
    assert blocked.check("Contact", "k", {}, "003x", "delete").status_code == "DELETE_FAILED"
    assert parse_rule({"cause": "no_access"}).check("Contact", "k", {}, "003x", "delete") is None


def test_only_what_can_refuse_a_delete_is_a_delete_rule():
    with pytest.raises(RuleError, match="a delete is refused only for"):
        parse_rule({"cause": "validation_rule", "on": "delete"})
    assert parse_rule({"cause": "approval_lock", "on": "delete"}).on == "delete"
