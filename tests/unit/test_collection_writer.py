"""CollectionWriter through its seam (the client's ``restful`` call): splitting, retries, renewal, failures.

The wire itself (the real SalesforceHook and simple-salesforce against the
emulator over HTTPS) is covered in tests/integration; here a
scripted client answers the way simple-salesforce does: per-record result
lists, or its exception classes for refused requests.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from include.crm_export import exact_json
from include.crm_export.errors import (
    RejectedRecord,
    RequestFailed,
    RequestLimitExceeded,
    RequestRefused,
    ServerBusy,
    SessionExpired,
    StreamConfigError,
)
from include.crm_export.mapping import SourceRecord
from include.crm_export.salesforce import CollectionWriter, Saved


def ok(payload: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"003{payload['Ext__c']}", "success": True, "created": True, "errors": []}


def rejected(code: str, message: str = "no", fields: list[str] | None = None) -> dict[str, Any]:
    return {"success": False, "errors": [{"statusCode": code, "message": message, "fields": fields or []}]}


class ScriptedClient:
    """Answers like simple-salesforce's ``Salesforce.restful``; ``answer`` decides per request."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.requests: list[list[dict[str, Any]]] = []
        self.session = requests.Session()
        self.headers: dict[str, str] = {}

    def restful(self, path: str, method: str, data: str) -> Any:
        body = exact_json.loads(data)
        assert (method, body["allOrNone"]) == ("PATCH", False)
        self.requests.append(body["records"])
        return self.answer(body["records"], len(self.requests))


def payloads(n: int) -> list[dict[str, Any]]:
    return [{"attributes": {"type": "Contact"}, "Ext__c": str(i), "LastName": f"L{i}"} for i in range(1, n + 1)]


def writer(client: ScriptedClient, **kwargs: Any) -> CollectionWriter:
    sleeps: list[float] = []
    made = CollectionWriter(client, sobject="Contact", external_id_field="Ext__c", sleep=sleeps.append, **kwargs)
    made.sleeps = sleeps  # type: ignore[attr-defined]
    return made


def error_body(code: str, message: str = "refused", fields: list[str] | None = None) -> list[dict[str, Any]]:
    return [{"errorCode": code, "message": message, "fields": fields or []}]


def test_per_record_results_in_input_order():
    client = ScriptedClient(lambda records, _: [ok(r) if r["Ext__c"] != "2" else rejected("X") for r in records])
    results = writer(client).upsert(payloads(3))
    assert [type(r) for r in results] == [Saved, RejectedRecord, Saved]
    assert results[1].code == "X"


def test_a_request_refused_for_one_record_is_split_until_that_record_is_isolated():
    def answer(records, _):
        if any(r["Ext__c"] == "5" for r in records):
            raise SalesforceMalformedRequest("url", 400, "composite", error_body("JSON_PARSER_ERROR", "bad", []))
        return [ok(r) for r in records]

    client = ScriptedClient(answer)
    results = writer(client).upsert(payloads(8))
    assert [isinstance(r, Saved) for r in results] == [True] * 4 + [False] + [True] * 3
    assert results[4] == RejectedRecord("JSON_PARSER_ERROR", "bad", ())
    assert len(client.requests) <= 2 * 8 - 1


def test_a_request_every_part_of_which_is_refused_alike_is_a_request_failure_not_n_rejections():
    """An admin removed the integration user's access to a mapped field: no record is at fault."""

    def answer(records, _):
        raise SalesforceMalformedRequest(
            "url", 400, "composite", error_body("INVALID_FIELD", "No such column 'Title' on sobject of type Contact")
        )

    client = ScriptedClient(answer)
    with pytest.raises(RequestRefused, match="not any one record's fault") as raised:
        writer(client).upsert(payloads(200))
    assert "grant it edit access to the field" in str(raised.value)
    assert raised.value.code == "INVALID_FIELD"
    assert len(client.requests) <= 5  # not 399


def test_two_records_refused_for_different_reasons_are_both_isolated():
    def answer(records, _):
        for r in records:
            if r["Ext__c"] in ("3", "150"):
                raise SalesforceMalformedRequest("url", 400, "c", error_body("JSON_PARSER_ERROR", f"bad {r['Ext__c']}"))
        return [ok(r) for r in records]

    results = writer(ScriptedClient(answer)).upsert(payloads(200))
    rejected = {i + 1: r.message for i, r in enumerate(results) if isinstance(r, RejectedRecord)}
    assert rejected == {3: "bad 3", 150: "bad 150"}


def test_transient_record_errors_are_retried_with_backoff_then_go_through():
    def answer(records, attempt):
        return [rejected("UNABLE_TO_LOCK_ROW") if r["Ext__c"] == "2" and attempt < 3 else ok(r) for r in records]

    client = ScriptedClient(answer)
    made = writer(client, backoff_seconds=0.5)
    results = made.upsert(payloads(3))
    assert all(isinstance(r, Saved) for r in results)
    assert [len(r) for r in client.requests] == [3, 1, 1]  # only the locked record is sent again
    assert made.sleeps == [0.5, 1.0]


def test_transient_errors_that_outlast_the_retries_count_as_rejections():
    client = ScriptedClient(lambda records, _: [rejected("UNABLE_TO_LOCK_ROW") for _ in records])
    made = writer(client, transient_retries=2)
    (result,) = made.upsert(payloads(1))
    assert isinstance(result, RejectedRecord)
    assert result.transient
    assert len(client.requests) == 3


class CountingRenewer:
    def __init__(self) -> None:
        self.renewed = 0

    def renew(self, sf: Any) -> None:
        self.renewed += 1


def test_an_expired_session_is_renewed_once_and_the_request_sent_again():
    def answer(records, attempt):
        if attempt == 1:
            raise SalesforceExpiredSession("url", 401, "composite", error_body("INVALID_SESSION_ID"))
        return [ok(r) for r in records]

    renewer = CountingRenewer()
    client = ScriptedClient(answer)
    results = writer(client, renewer=renewer).upsert(payloads(2))
    assert all(isinstance(r, Saved) for r in results)
    assert renewer.renewed == 1


def test_an_expired_session_without_a_way_to_renew_is_a_request_failure_that_says_what_to_do():
    def answer(records, attempt):
        raise SalesforceExpiredSession("url", 401, "composite", error_body("INVALID_SESSION_ID"))

    with pytest.raises(SessionExpired, match="Put a fresh access token in the connection") as raised:
        writer(ScriptedClient(answer)).upsert(payloads(1))
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None


@pytest.mark.parametrize(
    ("exception", "expected", "code", "requests_made"),
    [
        (
            SalesforceRefusedRequest("u", 403, "r", error_body("REQUEST_LIMIT_EXCEEDED")),
            RequestLimitExceeded,
            "REQUEST_LIMIT_EXCEEDED",
            1,
        ),
        # A server that could not serve the request is asked again (twice, by default) before it counts.
        (SalesforceGeneralError("u", 503, "r", error_body("SERVER_UNAVAILABLE")), ServerBusy, "SERVER_UNAVAILABLE", 3),
        (
            SalesforceRefusedRequest(
                "u",
                403,
                "r",
                [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "ConcurrentPerOrgLongTxn Limit exceeded."}],
            ),
            ServerBusy,
            "REQUEST_LIMIT_EXCEEDED",
            3,
        ),
        (SalesforceResourceNotFound("u", 404, "r", error_body("NOT_FOUND")), StreamConfigError, None, 1),
        (requests.exceptions.ConnectionError("refused"), RequestFailed, None, 1),
        (requests.exceptions.ReadTimeout("slow"), RequestFailed, None, 1),
    ],
)
def test_request_level_failures_are_not_record_rejections(exception, expected, code, requests_made):
    def answer(records, _):
        raise exception

    client = ScriptedClient(answer)
    made = writer(client)
    with pytest.raises(expected) as raised:
        made.upsert(payloads(3))
    assert len(client.requests) == requests_made  # never split, never retried record by record
    assert all(len(sent) == 3 for sent in client.requests)
    if code is not None:
        assert raised.value.code == code
    if requests_made > 1:
        assert made.sleeps == [1.0, 2.0]
        assert "(tried 3 times)" in str(raised.value)


def test_a_server_that_recovers_loses_nothing_and_lowers_the_level():
    from include.crm_export.concurrency import Concurrency

    def answer(records, n):
        if n == 1:
            raise SalesforceGeneralError("u", 503, "r", error_body("SERVER_UNAVAILABLE"))
        return [ok(r) for r in records]

    level = Concurrency(8, slow_seconds=10)
    made = writer(ScriptedClient(answer))
    made.observe(level)
    assert all(isinstance(result, Saved) for result in made.upsert(payloads(3)))
    assert (made.sleeps, made.requests_sent) == ([1.0], 2)
    assert level.allowed == 4
    assert level.backoffs == {"HTTP 503 SERVER_UNAVAILABLE": 1}


def test_a_lock_storm_is_reported_before_the_records_are_retried():
    from include.crm_export.concurrency import Concurrency

    def answer(records, n):
        return [
            rejected("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access") if n == 1 else ok(r) for r in records
        ]

    level = Concurrency(8, slow_seconds=10)
    made = writer(ScriptedClient(answer))
    made.observe(level)
    assert all(isinstance(result, Saved) for result in made.upsert(payloads(10)))
    assert level.backoffs == {"UNABLE_TO_LOCK_ROW": 1}


def test_an_answer_with_the_wrong_number_of_results_is_a_request_failure():
    client = ScriptedClient(lambda records, _: [ok(records[0])])
    with pytest.raises(RequestFailed, match="answered 1 results for 2 records"):
        writer(client).upsert(payloads(2))


def test_send_keeps_unmappable_records_out_of_the_request_and_in_order():
    unmappable = RejectedRecord("CRM_EXPORT_INVALID_SOURCE_VALUE", "Source column x: not a number", ("X__c",))
    records = [
        SourceRecord("1", (1,), "1", payloads(1)[0]),
        SourceRecord("2", (2,), "2", None, unmappable),
        SourceRecord("3", (3,), "3", payloads(3)[2]),
    ]
    client = ScriptedClient(lambda rs, _: [ok(r) for r in rs])
    outcomes = writer(client).send(records)
    assert [o.rejection for o in outcomes] == [None, unmappable, None]
    assert [r["Ext__c"] for r in client.requests[0]] == ["1", "3"]


def test_trace_sees_the_exact_request_and_answer():
    seen = []
    client = ScriptedClient(lambda rs, _: [ok(r) for r in rs])
    writer(client, trace=lambda *exchange: seen.append(exchange)).upsert(payloads(1))
    ((method, path, body, answer),) = seen
    assert (method, path) == ("PATCH", "composite/sobjects/Contact/Ext__c")
    assert body == {"allOrNone": False, "records": payloads(1)}
    assert answer[0]["success"] is True


def test_numerics_go_out_digit_for_digit():
    from decimal import Decimal

    seen = []
    client = ScriptedClient(lambda rs, _: [ok(r) for r in rs])
    original = client.restful
    client.restful = lambda path, method, data: (seen.append(data), original(path, method, data))[1]
    payload = {"attributes": {"type": "Contact"}, "Ext__c": "1", "Amount__c": Decimal("9999999999999999.99")}
    writer(client).upsert([payload])
    assert '"Amount__c": 9999999999999999.99' in seen[0]


def test_a_row_lock_inside_automation_is_transient_under_its_wrapping_code():
    wrapped = RejectedRecord(
        "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
        "ContactTrigger: execution of AfterUpdate caused by: System.DmlException: Update failed. First exception on "
        "row 0; first error: UNABLE_TO_LOCK_ROW, unable to obtain exclusive access to this record: []",
    )
    failing_trigger = RejectedRecord("CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY", "System.NullPointerException")
    assert wrapped.transient
    assert not failing_trigger.transient


@pytest.mark.parametrize(
    ("code", "says"), [("API_DISABLED_FOR_ORG", "enable it"), ("API_CURRENTLY_DISABLED", '"API Enabled" permission')]
)
def test_api_access_refusals_are_request_failures_an_admin_must_fix(code, says):
    def answer(records, _):
        raise SalesforceRefusedRequest("u", 403, "r", error_body(code, "API is disabled"))

    with pytest.raises(RequestRefused, match=says) as raised:
        writer(ScriptedClient(answer)).upsert(payloads(2))
    assert raised.value.code == code
