"""The Salesforce emulator on the wire, through SalesforceHook and simple-salesforce.

Shapes follow Salesforce's REST API documentation:
- sObject Collections upsert: resources_composite_sobjects_collections_upsert.htm
- status codes and error bodies: errorcodes.htm
"""

from __future__ import annotations

import time

import pytest
import requests
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from include.crm_export.http import SalesforceSession

UPSERT = "composite/sobjects/Contact/CRM_Contact_Id__c"


def contact(key: str, **fields) -> dict:
    return {"attributes": {"type": "Contact"}, "CRM_Contact_Id__c": key, "LastName": f"Last {key}", **fields}


def upsert(sf, records, *, all_or_none=False, path=UPSERT):
    return sf.restful(path, method="PATCH", json={"allOrNone": all_or_none, "records": records})


def test_versions_list_is_served_without_a_session(sf):
    response = sf.session.get(f"https://{sf.sf_instance}/services/data/")
    assert response.status_code == 200
    versions = [v["version"] for v in response.json()]
    assert "62.0" in versions
    assert all(v["url"] == f"/services/data/v{v['version']}" for v in response.json())


def test_describe_reports_types_lengths_required_and_external_ids(sf):
    fields = {f["name"]: f for f in sf.Contact.describe()["fields"]}
    assert fields["LastName"]["type"] == "string"
    assert fields["LastName"]["length"] == 80
    assert fields["LastName"]["nillable"] is False
    assert fields["LastName"]["createable"] is True
    assert fields["CRM_Contact_Id__c"]["externalId"] is True
    assert fields["Birthdate"]["type"] == "date"
    assert fields["Id"]["createable"] is False
    custom = sf.Subscription__c.describe()
    assert custom["custom"] is True
    assert {"Name", "CRM_Subscription_Id__c", "Plan__c"} <= {f["name"] for f in custom["fields"]}


def test_upsert_creates_then_updates_by_external_id_in_input_order(sf, emulator):
    first = upsert(sf, [contact("c1", Email="one@example.com"), contact("c2")])
    assert [r["success"] for r in first] == [True, True]
    assert [r["created"] for r in first] == [True, True]
    assert first[0]["errors"] == []
    assert first[0]["id"].startswith("003")
    assert len(first[0]["id"]) == 18

    second = upsert(sf, [contact("c2", FirstName="Ada"), contact("c1", Email="new@example.com")])
    assert [r["created"] for r in second] == [False, False]
    assert [r["id"] for r in second] == [first[1]["id"], first[0]["id"]]

    stored = {r["CRM_Contact_Id__c"]: r for r in emulator.records("Contact")}
    assert stored["c1"]["Email"] == "new@example.com"
    assert stored["c2"]["FirstName"] == "Ada"
    assert len(stored) == 2


def test_all_or_none_false_saves_the_good_records(sf, emulator):
    results = upsert(sf, [contact("ok1"), contact("bad", LastName=None), contact("ok2")])
    assert [r["success"] for r in results] == [True, False, True]
    assert results[1]["errors"] == [
        {
            "statusCode": "REQUIRED_FIELD_MISSING",
            "message": "Required fields are missing: [LastName]",
            "fields": ["LastName"],
        }
    ]
    assert sorted(r["CRM_Contact_Id__c"] for r in emulator.records("Contact")) == ["ok1", "ok2"]


def test_all_or_none_true_rolls_back_the_whole_request(sf, emulator):
    results = upsert(sf, [contact("ok1"), contact("bad", Email="not-an-email")], all_or_none=True)
    assert [r["success"] for r in results] == [False, False]
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"][0]["statusCode"] == "INVALID_EMAIL_ADDRESS"
    assert emulator.records("Contact") == []


def test_unknown_field_rejects_the_whole_request(sf, emulator):
    with pytest.raises(SalesforceMalformedRequest) as raised:
        upsert(sf, [contact("ok"), contact("bad", Shoe_Size__c="44")])
    assert raised.value.status == 400
    assert raised.value.content[0]["errorCode"] == "INVALID_FIELD"
    assert "Shoe_Size__c" in raised.value.content[0]["message"]
    assert emulator.records("Contact") == []


def test_wrong_type_rejects_the_whole_request(sf, emulator):
    with pytest.raises(SalesforceMalformedRequest) as raised:
        upsert(sf, [contact("bad", Birthdate="31/12/1990")])
    assert raised.value.content[0]["errorCode"] == "JSON_PARSER_ERROR"
    with pytest.raises(SalesforceMalformedRequest):
        upsert(sf, [contact("bad", HasOptedOutOfEmail="yes")])
    assert emulator.records("Contact") == []


def test_string_too_long_fails_only_that_record(sf):
    results = upsert(sf, [contact("long", FirstName="x" * 41), contact("fine", FirstName="x" * 40)])
    assert results[0]["errors"][0]["statusCode"] == "STRING_TOO_LONG"
    assert results[0]["errors"][0]["fields"] == ["FirstName"]
    assert "max length=40" in results[0]["errors"][0]["message"]
    assert results[1]["success"] is True


def test_same_external_id_twice_in_one_request(sf, emulator):
    results = upsert(sf, [contact("dup"), contact("dup", FirstName="again"), contact("single")])
    assert [r["success"] for r in results] == [False, False, True]
    assert {r["errors"][0]["statusCode"] for r in results[:2]} == {"DUPLICATE_VALUE"}
    assert [r["CRM_Contact_Id__c"] for r in emulator.records("Contact")] == ["single"]


def test_more_than_200_records_is_refused(sf):
    with pytest.raises(SalesforceMalformedRequest) as raised:
        upsert(sf, [contact(f"c{i}") for i in range(201)])
    assert raised.value.content[0]["errorCode"] == "EXCEEDED_ID_LIMIT"


def test_unknown_object_and_non_external_id_field(sf):
    with pytest.raises(SalesforceResourceNotFound):
        upsert(sf, [contact("x")], path="composite/sobjects/Nope__c/CRM_Contact_Id__c")
    with pytest.raises(SalesforceResourceNotFound) as raised:
        upsert(sf, [contact("x")], path="composite/sobjects/Contact/Email")
    assert "external ID field" in raised.value.content[0]["message"]


def test_query_reads_records_back_and_pages(sf):
    for start in range(0, 2500, 200):
        upsert(sf, [contact(f"q{i:05d}", MailingCity="Oslo" if i % 2 else "Bergen") for i in range(start, start + 200)])
    one = sf.query("SELECT Id, LastName, MailingCity FROM Contact WHERE CRM_Contact_Id__c = 'q00007'")
    assert one["totalSize"] == 1
    assert one["records"][0]["LastName"] == "Last q00007"
    assert one["records"][0]["attributes"]["type"] == "Contact"
    first_page = sf.query("SELECT Id FROM Contact")
    assert first_page["done"] is False
    assert len(first_page["records"]) == 2000
    everything = sf.query_all("SELECT Id, CRM_Contact_Id__c FROM Contact WHERE MailingCity = 'Oslo'")
    assert everything["totalSize"] == 1300
    assert len(everything["records"]) == 1300
    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == 2600
    ordered = sf.query("SELECT CRM_Contact_Id__c FROM Contact ORDER BY CRM_Contact_Id__c DESC LIMIT 2")
    assert [r["CRM_Contact_Id__c"] for r in ordered["records"]] == ["q02599", "q02598"]
    with pytest.raises(SalesforceMalformedRequest):
        sf.query("SELECT Nope__c FROM Contact")


def test_limits_count_api_requests(sf):
    before = sf.limits()["DailyApiRequests"]["Remaining"]
    sf.Contact.describe()
    after = sf.limits()["DailyApiRequests"]["Remaining"]
    assert after == before - 2  # the describe and this limits call


@pytest.mark.parametrize(
    ("cause", "status_code"),
    [
        ("validation_rule", "FIELD_CUSTOM_VALIDATION_EXCEPTION"),
        ("no_access", "INSUFFICIENT_ACCESS_OR_READONLY"),
        ("no_cross_reference_access", "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY"),
        ("flow_failure", "CANNOT_EXECUTE_FLOW_TRIGGER"),
    ],
)
def test_record_rules_reject_matching_records_with_their_status_code(sf, emulator, cause, status_code):
    emulator.add_rule(
        cause=cause,
        object="Contact",
        when={"field": "Email", "op": "endswith", "value": "@blocked.example"},
        message="Blocked by test",
        fields=["Email"],
    )
    results = upsert(sf, [contact("a", Email="a@fine.example"), contact("b", Email="b@blocked.example")])
    assert results[0]["success"] is True
    assert results[1] == {
        "success": False,
        "errors": [{"statusCode": status_code, "message": "Blocked by test", "fields": ["Email"]}],
    }
    assert [r["CRM_Contact_Id__c"] for r in emulator.records("Contact")] == ["a"]


def test_validation_rule_is_lifted_when_removed(sf, emulator):
    rule = emulator.add_rule(
        cause="validation_rule",
        when={"field": "Title", "op": "eq", "value": "CEO"},
        message="Title CEO needs approval",
        fields=["Title"],
    )
    assert upsert(sf, [contact("boss", Title="CEO")])[0]["errors"][0]["message"] == "Title CEO needs approval"
    emulator.remove_rule(rule["id"])
    assert upsert(sf, [contact("boss", Title="CEO")])[0]["success"] is True


def test_rules_for_another_object_do_not_apply(sf, emulator):
    emulator.add_rule(cause="no_access", object="Subscription__c")
    assert upsert(sf, [contact("a")])[0]["success"] is True


def test_row_lock_fails_the_first_attempts_only(sf, emulator):
    emulator.add_rule(cause="row_lock", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "locked"}, times=2)
    codes = [upsert(sf, [contact("locked")])[0] for _ in range(3)]
    assert [c["success"] for c in codes] == [False, False, True]
    assert codes[0]["errors"][0]["statusCode"] == "UNABLE_TO_LOCK_ROW"


@pytest.mark.parametrize(
    ("fault", "exception", "status", "error_code"),
    [
        ("http_500", SalesforceGeneralError, 500, "UNKNOWN_EXCEPTION"),
        ("http_503", SalesforceGeneralError, 503, "SERVER_UNAVAILABLE"),
        ("request_limit", SalesforceRefusedRequest, 403, "REQUEST_LIMIT_EXCEEDED"),
        ("invalid_session", SalesforceExpiredSession, 401, "INVALID_SESSION_ID"),
    ],
)
def test_request_faults(sf, emulator, fault, exception, status, error_code):
    emulator.add_rule(fault=fault, path="composite/sobjects", times=1)
    with pytest.raises(exception) as raised:
        upsert(sf, [contact("f")])
    assert raised.value.status == status
    assert raised.value.content[0]["errorCode"] == error_code
    assert emulator.records("Contact") == []
    assert upsert(sf, [contact("f")])[0]["success"] is True  # times=1: the next request goes through


def test_fault_skips_the_first_requests(sf, emulator):
    emulator.add_rule(fault="http_503", path="composite/sobjects", skip=2, times=1)
    upsert(sf, [contact("1")])
    upsert(sf, [contact("2")])
    with pytest.raises(SalesforceGeneralError):
        upsert(sf, [contact("3")])
    upsert(sf, [contact("4")])
    assert sorted(r["CRM_Contact_Id__c"] for r in emulator.records("Contact")) == ["1", "2", "4"]


def test_latency_delays_every_matching_request(sf, emulator):
    emulator.add_rule(fault="latency", seconds=0.3)
    started = time.monotonic()
    sf.Contact.describe()
    assert time.monotonic() - started >= 0.3


def test_hanging_response_hits_the_client_timeout(sf, emulator):
    emulator.add_rule(fault="hang", path="composite/sobjects", seconds=30, times=1)
    with pytest.raises(requests.exceptions.ReadTimeout):
        sf.restful(UPSERT, method="PATCH", json={"records": [contact("h")]}, timeout=(2, 1))


def test_expired_sessions_need_a_new_token(sf, emulator, stack):
    emulator.expire_sessions()
    with pytest.raises(SalesforceExpiredSession):
        sf.Contact.describe()
    info = stack.emulator_info
    session = SalesforceSession(ca_bundle=info.ca_bundle)
    token = session.post(
        f"{info.url}/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": info.client_id, "client_secret": info.client_secret},
    ).json()
    assert token["instance_url"] == info.url
    sf.session_id = token["access_token"]
    sf.headers["Authorization"] = f"Bearer {token['access_token']}"
    assert sf.Contact.describe()["name"] == "Contact"
    bad = session.post(
        f"{info.url}/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": info.client_id, "client_secret": "wrong"},
    )
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_client"


def test_tls_is_verified_against_the_emulator_ca(stack):
    info = stack.emulator_info
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{info.url}/__emulator__/health", verify="/etc/ssl/certs/ca-certificates.crt", timeout=5)
    assert SalesforceSession(ca_bundle=info.ca_bundle).get(f"{info.url}/__emulator__/health").ok


def test_counters_and_rules_are_visible_to_admins(sf, emulator):
    emulator.add_rule(cause="validation_rule", when={"field": "Title", "op": "eq", "value": "x"})
    upsert(sf, [contact("a"), contact("b", Title="x")])
    counters = emulator.counters()
    assert counters["records_created"] == 1
    assert counters["record_errors.FIELD_CUSTOM_VALIDATION_EXCEPTION"] == 1
    assert [r["cause"] for r in emulator.rules()] == ["validation_rule"]
    emulator.clear_rules()
    assert emulator.rules() == []


def test_bad_rules_are_refused(emulator):
    from devstack.emulator.process import EmulatorError

    with pytest.raises(EmulatorError, match="Unknown cause"):
        emulator.add_rule(cause="gremlins")
    with pytest.raises(EmulatorError, match="Unknown fault"):
        emulator.add_rule(fault="gremlins")


def test_a_persistent_emulator_keeps_records_and_rules_across_restarts(tmp_path):
    from devstack.emulator.process import EmulatorAdmin, EmulatorProcess

    for round_number in (1, 2):
        with EmulatorProcess(tmp_path, persist=True) as info:
            admin = EmulatorAdmin(info)
            session = SalesforceSession(ca_bundle=info.ca_bundle)
            url = f"{info.url}/services/data/v62.0/{UPSERT}"
            headers = {"Authorization": f"Bearer {info.access_token}"}
            if round_number == 1:
                admin.add_rule(cause="no_access", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "x"})
                session.patch(url, json={"records": [contact("kept")]}, headers=headers).raise_for_status()
            else:
                assert [r["CRM_Contact_Id__c"] for r in admin.records("Contact")] == ["kept"]
                assert [r["cause"] for r in admin.rules()] == ["no_access"]
                answer = session.patch(url, json={"records": [contact("kept"), contact("x")]}, headers=headers)
                assert [r["success"] for r in answer.json()] == [True, False]
                assert answer.json()[0]["created"] is False


def test_token_endpoint_takes_http_basic_and_answers_with_the_documented_fields(stack):
    """Salesforce Help, "OAuth 2.0 Client Credentials Flow for Server-to-Server Integration"."""
    import base64
    import hashlib
    import hmac

    info = stack.emulator_info
    session = SalesforceSession(ca_bundle=info.ca_bundle)
    token = session.post(
        f"{info.url}/services/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=(info.client_id, info.client_secret),
    ).json()
    assert set(token) == {"access_token", "signature", "scope", "instance_url", "id", "token_type", "issued_at"}
    assert token["token_type"] == "Bearer"
    expected = hmac.new(
        info.client_secret.encode(), (token["id"] + token["issued_at"]).encode(), hashlib.sha256
    ).digest()
    assert base64.b64decode(token["signature"]) == expected
    wrong = session.post(
        f"{info.url}/services/oauth2/token", data={"grant_type": "client_credentials"}, auth=(info.client_id, "no")
    )
    assert wrong.status_code == 400


def test_the_hooks_own_login_flow_renews_an_expired_session_by_itself(stack, emulator, monkeypatch):
    """The provider's hook logs in with the client credentials flow; simple-salesforce renews the session."""
    import json

    from include.crm_export.salesforce import connect

    monkeypatch.setenv(
        "AIRFLOW_CONN_SALESFORCE_DEFAULT", json.dumps(stack.emulator_info.client_credentials_connection())
    )
    sf = connect(timeout=(5, 10))
    assert emulator.counters()["sessions_issued"] == 1
    assert sf.Contact.describe()["name"] == "Contact"
    emulator.add_rule(fault="session_expiry", path="/describe", times=1)
    assert sf.Contact.describe()["name"] == "Contact"  # 401, new session, same call again
    assert emulator.counters()["sessions_issued"] == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("Last_Activity_At__c", "2024-07-30 20:54:16"),  # no T
        ("Last_Activity_At__c", "2024-07-30"),  # a date where a dateTime is due
        ("Last_Activity_At__c", "2024-07-30T20:54:16"),  # no offset: the docs are silent, refused (stricter)
        ("Birthdate", "20240730"),  # basic ISO form
        ("Birthdate", "30/07/2024"),
    ],
)
def test_dates_and_datetimes_in_a_form_salesforce_refuses_fail_the_whole_request_without_fields(sf, value, field):
    """SOQL and SOSL Reference, "Valid Date and DateTime Formats"; JSON_PARSER_ERROR names no field."""
    with pytest.raises(SalesforceMalformedRequest) as refused:
        upsert(sf, [contact("ok"), contact("bad", **{field: value})])
    (error,) = refused.value.content
    assert error["errorCode"] == "JSON_PARSER_ERROR"
    assert value in error["message"]
    assert "fields" not in error or error["fields"] == []


def test_dates_and_datetimes_in_the_documented_forms_go_through(sf, emulator):
    answer = upsert(
        sf,
        [
            contact("z", Last_Activity_At__c="2024-07-30T20:54:16.123Z", Birthdate="1990-01-31"),
            contact("o", Last_Activity_At__c="2024-07-30T20:54:16+0200"),
        ],
    )
    assert [a["success"] for a in answer] == [True, True]


def test_external_ids_match_case_insensitively_as_an_orgs_external_id_text_field_does(sf, emulator):
    """An External ID text field is case-insensitive unless it is declared case sensitive."""
    first = upsert(sf, [contact("AbC-1")])
    again = upsert(sf, [contact("abc-1", Title="again")])
    assert first[0]["created"] is True
    assert (again[0]["created"], again[0]["id"]) == (False, first[0]["id"])
    assert len(emulator.records("Contact")) == 1
    both = upsert(sf, [contact("X-2"), contact("x-2")])
    assert [r["errors"][0]["statusCode"] for r in both] == ["DUPLICATE_VALUE", "DUPLICATE_VALUE"]


def test_an_empty_text_is_no_value(sf, emulator):
    answer = upsert(sf, [contact("e", Title=""), contact("r", LastName="")])
    assert answer[0]["success"] is True
    assert answer[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    (stored,) = emulator.records("Contact")
    assert stored["Title"] is None


def test_concurrent_requests_are_served_at_once_and_each_takes_its_time(sf, emulator):
    from concurrent.futures import ThreadPoolExecutor

    emulator.set_timing(latency_ms=400, jitter_ms=100, per_record_ms=1)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: upsert(sf, [contact(f"c{i}")])[0]["success"], range(6)))
    assert answers == [True] * 6
    assert emulator.timing()["peak_in_flight"] == 6  # all six were in the org at once, none queued behind another
    assert len(emulator.records("Contact")) == 6


def test_too_many_long_running_requests_are_refused_until_they_end(sf, emulator):
    """ "API Request Limits and Allocations": requests of 20 s or more are limited to 25 at once in production;
    over it new requests get REQUEST_LIMIT_EXCEEDED. Scaled down here: 2 at once, long after 0.3 s."""
    from concurrent.futures import ThreadPoolExecutor

    emulator.set_timing(latency_ms=1500, long_running_seconds=0.3, long_running_limit=2)
    with ThreadPoolExecutor(2) as pool:
        slow = [pool.submit(upsert, sf, [contact(f"slow{i}")]) for i in range(2)]
        time.sleep(0.8)
        with pytest.raises(SalesforceRefusedRequest) as refused:
            upsert(sf, [contact("third")])
        assert refused.value.content[0] == {
            "message": "ConcurrentPerOrgLongTxn Limit exceeded.",
            "errorCode": "REQUEST_LIMIT_EXCEEDED",
        }
        assert [future.result()[0]["success"] for future in slow] == [True, True]
    emulator.set_timing()
    assert upsert(sf, [contact("after")])[0]["success"] is True


def test_the_single_record_upsert_by_external_id_creates_then_updates_case_insensitively(sf, emulator):
    """REST API Developer Guide, "Insert or Update (Upsert) a Record Using an External ID": PATCH
    /sobjects/{object}/{externalIdField}/{value}; 201 created, then 200, a rejection is a 400 with its error."""
    assert sf.Contact.upsert("CRM_Contact_Id__c/Ab-1", {"LastName": "First"}) == 201
    assert sf.Contact.upsert("CRM_Contact_Id__c/ab-1", {"LastName": "Second"}) == 200
    (stored,) = emulator.records("Contact")
    assert stored["LastName"] == "Second"
    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf.Contact.upsert("CRM_Contact_Id__c/new-2", {"LastName": ""})
    assert refused.value.content[0]["errorCode"] == "REQUIRED_FIELD_MISSING"


def delete(sf, ids, *, all_or_none=False):
    """sObject Collections delete ("Delete Records Using sObject Collections", REST API Developer Guide)."""
    return sf.restful(f"composite/sobjects?ids={','.join(ids)}&allOrNone={str(all_or_none).lower()}", method="DELETE")


def test_collections_delete_answers_per_id_in_order_and_a_deleted_record_is_deleted(sf, emulator):
    saved = upsert(sf, [contact("a"), contact("b"), contact("c")])
    a, b, _c = (item["id"] for item in saved)
    nowhere = a[:3] + "9" * 12  # a Contact id no record has
    results = delete(sf, [a, "not-an-id", b, nowhere])

    assert results[0] == {"id": a, "success": True, "errors": []}
    assert results[1]["success"] is False
    assert results[1]["errors"][0]["statusCode"] == "MALFORMED_ID"
    assert "id" not in results[1]  # as the guide's example of a failed item
    assert results[2] == {"id": b, "success": True, "errors": []}
    assert results[3]["errors"][0]["statusCode"] == "INVALID_CROSS_REFERENCE_KEY"
    assert [r["CRM_Contact_Id__c"] for r in emulator.records("Contact")] == ["c"]
    (again,) = delete(sf, [a])
    assert again["errors"][0] == {"statusCode": "ENTITY_IS_DELETED", "message": "entity is deleted", "fields": []}
    # The external id is free again: the next upsert creates a new record.
    (back,) = upsert(sf, [contact("a")])
    assert back["created"] is True
    assert back["id"] != a


def test_a_delete_rule_refuses_the_delete_and_all_or_none_rolls_the_rest_back(sf, emulator):
    saved = upsert(sf, [contact("a"), contact("b")])
    a, b = (item["id"] for item in saved)
    emulator.add_rule(cause="validation_rule", object="Contact")  # saving rules do not touch deletes
    emulator.add_rule(
        cause="delete_blocked",
        on="delete",
        object="Contact",
        when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "b"},
    )

    rolled_back = delete(sf, [a, b], all_or_none=True)
    assert rolled_back[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert rolled_back[1]["errors"][0]["statusCode"] == "DELETE_FAILED"
    assert len(emulator.records("Contact")) == 2

    each = delete(sf, [a, b])
    assert each[0]["success"] is True
    assert each[1]["errors"][0]["statusCode"] == "DELETE_FAILED"
    assert [r["CRM_Contact_Id__c"] for r in emulator.records("Contact")] == ["b"]


def test_collections_delete_takes_at_most_200_ids(sf, emulator):
    (saved,) = upsert(sf, [contact("a")])
    with pytest.raises(SalesforceMalformedRequest) as refused:
        delete(sf, [saved["id"]] * 201)
    assert refused.value.content[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    assert len(emulator.records("Contact")) == 1


def test_a_delete_takes_an_accounts_contacts_and_all_or_none_counts_them(sf, emulator):
    """Contacts go with their account (Salesforce Help, "Delete Accounts"): named again later in the same call
    they are deleted already, which rolls an allOrNone call back; a Contact's delete rule keeps its account."""
    (account,) = sf.restful(
        "composite/sobjects/Account/CRM_Account_Id__c",
        method="PATCH",
        json={
            "allOrNone": False,
            "records": [{"attributes": {"type": "Account"}, "CRM_Account_Id__c": "A1", "Name": "A"}],
        },
    )
    parent = {"attributes": {"type": "Account"}, "CRM_Account_Id__c": "A1"}
    (child,) = upsert(sf, [contact("c", Account=parent)])

    rolled_back = delete(sf, [account["id"], child["id"]], all_or_none=True)
    assert rolled_back[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert rolled_back[1]["errors"][0]["statusCode"] == "ENTITY_IS_DELETED"
    assert len(emulator.records("Contact")) == 1

    rule = emulator.add_rule(cause="delete_blocked", on="delete", object="Contact")["id"]
    (kept,) = delete(sf, [account["id"][:15]])  # the 15-character form names the same record
    assert kept["errors"][0]["statusCode"] == "DELETE_FAILED"
    assert len(emulator.records("Account")) == 1
    emulator.remove_rule(rule)
    (gone,) = delete(sf, [account["id"][:15]])
    assert gone == {"id": account["id"], "success": True, "errors": []}
    assert emulator.records("Contact") == []
