"""HTTP layer of the emulator: the REST API routes and the admin endpoints.

API routes mirror Salesforce's paths under ``/services/data/vXX.X/`` and need
``Authorization: Bearer <token>``; admin routes live under ``/__emulator__/``
and exist only here (tests and the local run use them to set failure rules
and read what the org holds).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse as _StarletteJSONResponse
from starlette.responses import Response
from starlette.routing import Route

from devstack.emulator.org import Org
from devstack.emulator.rules import RuleError
from devstack.emulator.schema import RequestRejected
from devstack.emulator.timing import Timing
from include.crm_export import exact_json

log = logging.getLogger(__name__)


class JSONResponse(_StarletteJSONResponse):
    """Numbers go out digit for digit, as Salesforce returns them (no float in between)."""

    def render(self, content: Any) -> bytes:
        return exact_json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


API_VERSIONS = ["58.0", "59.0", "60.0", "61.0", "62.0"]

Handler = Callable[[Request, Org], Awaitable[Any]]


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse([{"message": message, "errorCode": code}], status_code=status)


def api(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a REST API handler with what every real API call goes through."""

    async def endpoint(request: Request) -> Response:
        org: Org = request.app.state.org
        response = await serve(request, org)
        response.headers["Sforce-Limit-Info"] = org.limit_info()
        return response

    async def serve(request: Request, org: Org) -> Response:
        method, path = request.method, request.url.path
        if org.api_used >= org.daily_api_requests:
            # Stricter than a real org, which tolerates a little overage before it refuses.
            org.counters["request_errors.REQUEST_LIMIT_EXCEEDED"] += 1
            return _error(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        ticket = org.timing.start()
        if ticket is None:
            org.counters["request_errors.REQUEST_LIMIT_EXCEEDED"] += 1
            return _error(403, "REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded.")
        try:
            org.peak_in_flight = max(org.peak_in_flight, org.timing.in_flight)
            return await _timed(request, org, method, path)
        finally:
            org.timing.finish(ticket)

    async def _timed(request: Request, org: Org, method: str, path: str) -> Response:
        org.counters["api_requests"] += 1
        org.counters[f"clients.{_call_options_client(request.headers.get('sforce-call-options'))}"] += 1
        before, after = org.timing.split()
        if before:
            await asyncio.sleep(before)
        response = await _answer(request, org, method, path)
        records = getattr(request.state, "records", 0)
        if after or records:
            await asyncio.sleep(after + org.timing.per_records(records))
        return response

    async def _answer(request: Request, org: Org, method: str, path: str) -> Response:
        for fault in org.faults_for(method, path):
            org.counters[f"faults.{fault.fault}"] += 1
            if fault.fault in ("latency", "hang"):
                await asyncio.sleep(fault.seconds)
                continue
            if fault.fault == "session_expiry":
                org.expire_sessions()  # revoked: every token issued so far stops working
            status, body = fault.response
            return JSONResponse(body, status_code=status)
        version = request.path_params.get("version")
        if version is not None and version not in API_VERSIONS:
            return _error(404, "NOT_FOUND", "The requested resource does not exist")
        if not org.token_valid(request.headers.get("authorization")):
            org.counters["request_errors.INVALID_SESSION_ID"] += 1
            return _error(401, "INVALID_SESSION_ID", "Session expired or invalid")
        try:
            result = await handler(request, org)
        except RequestRejected as rejected:
            org.counters[f"request_errors.{rejected.error_code}"] += 1
            return JSONResponse(rejected.body(), status_code=rejected.status)
        if isinstance(result, Response):
            return result
        return JSONResponse(result)

    return endpoint


def _call_options_client(header: str | None) -> str:
    """The ``client`` of a Sforce-Call-Options header ("client=name; defaultNamespace=ns"), or "none".

    Counted per client, as the org's event log files attribute calls ("Call Options Header", REST API
    Developer Guide). The guide's examples separate options with ";" (older ones with ","); both are read.
    """
    for option in (header or "").replace(",", ";").split(";"):
        name, _, value = option.strip().partition("=")
        if name.strip() == "client" and value.strip():
            return value.strip()
    return "none"


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return exact_json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestRejected(
            400, "JSON_PARSER_ERROR", f"Unexpected character: {exc.msg} at [line:{exc.lineno}, column:{exc.colno}]"
        ) from None


async def versions(request: Request) -> Response:
    # The versions list is the one resource Salesforce serves without a session.
    return JSONResponse([{"label": f"v{v}", "url": f"/services/data/v{v}", "version": v} for v in API_VERSIONS])


async def describe_global(request: Request, org: Org) -> Any:
    version = request.path_params["version"]
    return {
        "encoding": "UTF-8",
        "maxBatchSize": 200,
        "sobjects": [
            {
                "name": s.name,
                "label": s.label,
                "custom": s.custom,
                "keyPrefix": s.key_prefix,
                "urls": s.describe(version)["urls"],
            }
            for s in org.objects.values()
        ],
    }


async def describe(request: Request, org: Org) -> Any:
    return org.schema(request.path_params["sobject"]).describe(request.path_params["version"])


async def record_by_id(request: Request, org: Org) -> Any:
    return _with_attributes(org.get_by_id(request.path_params["sobject"], request.path_params["record_id"]), request)


async def record_by_external_id(request: Request, org: Org) -> Any:
    p = request.path_params
    if request.method == "PATCH":
        return await _upsert_one(request, org)
    return _with_attributes(org.get_by_external_id(p["sobject"], p["field"], p["value"]), request)


async def _upsert_one(request: Request, org: Org) -> Response:
    """``PATCH /sobjects/{object}/{externalIdField}/{value}``: upsert one record by external id, as in "Insert or
    Update (Upsert) a Record Using an External ID" (REST API Developer Guide): 201 with ``created: true`` for a
    new record, 200 with ``created: false`` for an update, 400 with an error list for a rejected one."""
    p = request.path_params
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise RequestRejected(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
    fields = {k: v for k, v in body.items() if k != "attributes"}
    record = {"attributes": {"type": p["sobject"]}, **fields, p["field"]: p["value"]}
    assign = org.rest_assignment(p["sobject"], request.headers.get("sforce-auto-assign"))
    [result] = org.upsert(p["sobject"], p["field"], {"allOrNone": False, "records": [record]}, assign=assign)
    if not result["success"]:
        errors = [
            {"message": e["message"], "errorCode": e["statusCode"], "fields": e.get("fields", [])}
            for e in result["errors"]
        ]
        return JSONResponse(errors, status_code=400)
    return JSONResponse(result, status_code=201 if result["created"] else 200)


def _with_attributes(record: dict[str, Any], request: Request) -> dict[str, Any]:
    p = request.path_params
    url = f"/services/data/v{p['version']}/sobjects/{p['sobject']}/{record['Id']}"
    return {"attributes": {"type": p["sobject"], "url": url}, **record}


async def collection_upsert(request: Request, org: Org) -> Any:
    body = await _json_body(request)
    if isinstance(body, dict) and isinstance(body.get("records"), list):
        request.state.records = len(body["records"])  # the per-record part of the request's time
    sobject = request.path_params["sobject"]
    assign = org.rest_assignment(sobject, request.headers.get("sforce-auto-assign"))
    return org.upsert(sobject, request.path_params["field"], body, assign=assign)


async def collection_delete(request: Request, org: Org) -> Any:
    """``DELETE /composite/sobjects?ids=…&allOrNone=…`` ("Delete Records Using sObject Collections")."""
    ids = [i for i in request.query_params.get("ids", "").split(",") if i]
    flag = request.query_params.get("allOrNone", "false").lower()
    if flag not in ("true", "false"):
        raise RequestRejected(400, "INVALID_QUERY_FILTER_OPERATOR", f"allOrNone must be true or false, not {flag!r}")
    request.state.records = len(ids)  # the per-record part of the request's time
    return org.collection_delete(ids, all_or_none=flag == "true")


async def bulk_create(request: Request, org: Org) -> Any:
    return org.bulk.create(await _json_body(request), request.path_params["version"])


async def bulk_job(request: Request, org: Org) -> Any:
    job_id = request.path_params["job_id"]
    if request.method == "GET":
        return org.bulk.job(job_id).info()
    if request.method == "DELETE":
        org.bulk.delete(job_id)
        return Response(status_code=204)
    return org.bulk.change_state(job_id, await _json_body(request), org.timing.bulk_records_per_second)


async def bulk_upload(request: Request, org: Org) -> Any:
    if not request.headers.get("content-type", "").startswith("text/csv"):
        raise RequestRejected(400, "INVALIDBATCH", "Job data must be sent as text/csv")
    org.bulk.upload(request.path_params["job_id"], await request.body())
    return Response(status_code=201)


async def bulk_results(request: Request, org: Org) -> Any:
    text = org.bulk.results(request.path_params["job_id"], request.path_params["kind"])
    # "Formats: CSV", no charset named (the guide is silent on one): the stricter answer is a bare text/csv,
    # which a client must read as UTF-8 itself (requests would take it as ISO-8859-1).
    return Response(text.encode("utf-8"), headers={"content-type": "text/csv"})


async def query(request: Request, org: Org) -> Any:
    text = request.query_params.get("q")
    if not text:
        raise RequestRejected(400, "MALFORMED_QUERY", "The query parameter q is required")
    return org.query(text, request.path_params["version"])


async def query_more(request: Request, org: Org) -> Any:
    return org.query_more(request.path_params["locator"], request.path_params["version"])


async def limits(request: Request, org: Org) -> Any:
    return org.limits()


async def oauth_token(request: Request) -> Response:
    """OAuth 2.0 client credentials flow, as a My Domain token endpoint serves it.

    Follows "OAuth 2.0 Client Credentials Flow for Server-to-Server
    Integration" (Salesforce Help, remoteaccess_oauth_client_credentials_flow):
    the connected app's key and secret come in the body (client_id,
    client_secret) or as HTTP Basic, and the answer carries access_token,
    signature, scope, instance_url, id, token_type and issued_at.
    """
    org: Org = request.app.state.org
    form = await request.form()
    if form.get("grant_type") != "client_credentials":
        return JSONResponse(
            {"error": "unsupported_grant_type", "error_description": "grant type not supported"}, status_code=400
        )
    client_id, client_secret = form.get("client_id"), form.get("client_secret")
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("basic "):
        try:
            client_id, _, client_secret = base64.b64decode(authorization[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            client_id = client_secret = None
    try:
        token = org.issue_token(client_id, client_secret)
    except RequestRejected:
        return JSONResponse(
            {"error": "invalid_client", "error_description": "invalid client credentials"}, status_code=400
        )
    base = str(request.base_url).rstrip("/")
    identity = f"{base}/id/{org.org_id}/005000000000001AAA"
    issued_at = str(int(time.time() * 1000))
    signature = base64.b64encode(
        hmac.new(org.client_secret.encode(), (identity + issued_at).encode(), hashlib.sha256).digest()
    ).decode()
    return JSONResponse(
        {
            "access_token": token,
            "signature": signature,
            "scope": "api",
            "instance_url": base,
            "id": identity,
            "token_type": "Bearer",
            "issued_at": issued_at,
        }
    )


# admin


async def admin_health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def admin_rules(request: Request) -> Response:
    org: Org = request.app.state.org
    if request.method == "GET":
        return JSONResponse(org.rules_json())
    if request.method == "DELETE":
        org.clear_rules()
        return JSONResponse({"cleared": True})
    try:
        return JSONResponse(org.add_rule(await request.json()), status_code=201)
    except (RuleError, RequestRejected, json.JSONDecodeError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)


async def admin_rule(request: Request) -> Response:
    org: Org = request.app.state.org
    if org.remove_rule(int(request.path_params["rule_id"])):
        return JSONResponse({"removed": True})
    return JSONResponse({"error": "no such rule"}, status_code=404)


async def admin_records(request: Request) -> Response:
    org: Org = request.app.state.org
    try:
        return JSONResponse(org.snapshot(request.path_params["sobject"]))
    except RequestRejected as exc:
        return JSONResponse({"error": exc.message}, status_code=404)


async def admin_record(request: Request) -> Response:
    """Delete one record, as a person in the org would (children that cascade go with it, other lookups to it are
    cleared)."""
    org: Org = request.app.state.org
    try:
        counts = org.delete_record(request.path_params["sobject"], request.path_params["record_id"])
    except RequestRejected as exc:
        return JSONResponse({"error": exc.message}, status_code=404)
    return JSONResponse({"deleted": True, **counts})


async def admin_counters(request: Request) -> Response:
    return JSONResponse(dict(request.app.state.org.counters))


async def admin_reset(request: Request) -> Response:
    request.app.state.org.reset()
    return JSONResponse({"reset": True})


async def admin_field_access(request: Request) -> Response:
    """Field-level security for the integration user: {"object", "field", "visible"}."""
    raw = await request.json()
    try:
        answer = request.app.state.org.set_field_access(
            raw["object"], raw["field"], visible=bool(raw["visible"]), after_requests=int(raw.get("after_requests", 0))
        )
    except (KeyError, TypeError):
        return _error(400, "INVALID_INPUT", 'expected {"object": ..., "field": ..., "visible": true|false}')
    except RequestRejected as exc:
        return JSONResponse(exc.body(), status_code=exc.status)
    return JSONResponse(answer)


async def admin_limits(request: Request) -> Response:
    """The org's daily API allowance and what its other integrations used: {"daily_api_requests", "used_elsewhere"}."""
    raw = await request.json()
    org: Org = request.app.state.org
    org.set_api_usage(daily_api_requests=raw.get("daily_api_requests"), used_elsewhere=raw.get("used_elsewhere"))
    return JSONResponse({"limit_info": org.limit_info()})


async def admin_assignment_rules(request: Request) -> Response:
    """Add a Lead or Case assignment rule: {"sobject": "Lead", "owner_id": "005…", "active": true}."""
    raw = await request.json()
    org: Org = request.app.state.org
    rule = org.add_assignment_rule(
        str(raw.get("sobject")), str(raw.get("owner_id")), active=bool(raw.get("active", True))
    )
    return JSONResponse(rule.as_row() | {"OwnerId": rule.owner_id})


async def admin_org(request: Request) -> Response:
    """Which org this is: {"org_id": "00D…"} (15 or 18 characters), as after a sandbox refresh."""
    raw = await request.json()
    org_id = str(raw.get("org_id", ""))
    if not (org_id.startswith("00D") and len(org_id) in (15, 18) and org_id.isalnum()):
        return JSONResponse({"error": "org_id must be a 15- or 18-character id starting with 00D"}, status_code=400)
    org: Org = request.app.state.org
    org.org_id = org_id
    return JSONResponse({"org_id": org.org_id})


async def admin_timing(request: Request) -> Response:
    """How long requests take: {"latency_ms", "per_record_ms", "jitter_ms", "long_running_seconds",
    "long_running_limit", "seed"} (see timing.py); GET answers the settings and the peak of requests in flight."""
    org: Org = request.app.state.org
    if request.method == "POST":
        try:
            org.timing = Timing(**await request.json())
        except (TypeError, ValueError) as exc:
            return _error(400, "INVALID_INPUT", str(exc))
        org.peak_in_flight = 0
    return JSONResponse({**org.timing.as_dict(), "peak_in_flight": org.peak_in_flight})


async def admin_bulk(request: Request) -> Response:
    """Make the next Bulk API 2.0 job on an object fail after N records ({"object", "fail_after_records"}) or
    complete without recording the results of the records after N ({"object", "unrecorded_after_records"});
    or set how long ended jobs are kept ({"retention_seconds"}), or whether the user has the Bulk API Hard Delete
    permission ({"hard_delete_allowed": true})."""
    raw = await request.json()
    org: Org = request.app.state.org
    if "hard_delete_allowed" in raw:
        org.hard_delete_allowed = bool(raw["hard_delete_allowed"])
    elif "retention_seconds" in raw:
        org.bulk.retention_seconds = float(raw["retention_seconds"])
    elif "unrecorded_after_records" in raw:
        org.bulk_failures[str(raw["object"])] = (int(raw["unrecorded_after_records"]), "unrecorded")
    else:
        org.bulk_failures[str(raw["object"])] = (int(raw["fail_after_records"]), "fail")
    return JSONResponse(raw)


async def admin_expire_sessions(request: Request) -> Response:
    request.app.state.org.expire_sessions()
    return JSONResponse({"expired": True})


def create_app(org: Org, *, state_file: Path | None = None) -> Starlette:
    data = "/services/data/v{version}"
    routes = [
        Route("/services/data", versions, methods=["GET"]),
        Route("/services/data/", versions, methods=["GET"]),
        Route(f"{data}/sobjects", api(describe_global), methods=["GET"]),
        Route(f"{data}/sobjects/", api(describe_global), methods=["GET"]),
        Route(f"{data}/sobjects/{{sobject}}/describe", api(describe), methods=["GET"]),
        Route(f"{data}/sobjects/{{sobject}}/describe/", api(describe), methods=["GET"]),
        Route(f"{data}/sobjects/{{sobject}}/{{record_id}}", api(record_by_id), methods=["GET"]),
        Route(f"{data}/sobjects/{{sobject}}/{{field}}/{{value}}", api(record_by_external_id), methods=["GET", "PATCH"]),
        Route(f"{data}/composite/sobjects/{{sobject}}/{{field}}", api(collection_upsert), methods=["PATCH"]),
        Route(f"{data}/composite/sobjects", api(collection_delete), methods=["DELETE"]),
        Route(f"{data}/jobs/ingest", api(bulk_create), methods=["POST"]),
        Route(f"{data}/jobs/ingest/", api(bulk_create), methods=["POST"]),
        Route(f"{data}/jobs/ingest/{{job_id}}", api(bulk_job), methods=["GET", "PATCH", "DELETE"]),
        Route(f"{data}/jobs/ingest/{{job_id}}/batches", api(bulk_upload), methods=["PUT"]),
        Route(
            f"{data}/jobs/ingest/{{job_id}}/{{kind:str}}",
            api(bulk_results),
            methods=["GET"],
        ),
        Route(f"{data}/query", api(query), methods=["GET"]),
        Route(f"{data}/query/", api(query), methods=["GET"]),
        Route(f"{data}/query/{{locator}}", api(query_more), methods=["GET"]),
        Route(f"{data}/limits", api(limits), methods=["GET"]),
        Route(f"{data}/limits/", api(limits), methods=["GET"]),
        Route("/services/oauth2/token", oauth_token, methods=["POST"]),
        Route("/__emulator__/health", admin_health, methods=["GET"]),
        Route("/__emulator__/rules", admin_rules, methods=["GET", "POST", "DELETE"]),
        Route("/__emulator__/rules/{rule_id:int}", admin_rule, methods=["DELETE"]),
        Route("/__emulator__/records/{sobject}", admin_records, methods=["GET"]),
        Route("/__emulator__/records/{sobject}/{record_id}", admin_record, methods=["DELETE"]),
        Route("/__emulator__/counters", admin_counters, methods=["GET"]),
        Route("/__emulator__/reset", admin_reset, methods=["POST"]),
        Route("/__emulator__/sessions/expire", admin_expire_sessions, methods=["POST"]),
        Route("/__emulator__/field-access", admin_field_access, methods=["POST"]),
        Route("/__emulator__/limits", admin_limits, methods=["POST"]),
        Route("/__emulator__/timing", admin_timing, methods=["GET", "POST"]),
        Route("/__emulator__/org", admin_org, methods=["POST"]),
        Route("/__emulator__/assignment-rules", admin_assignment_rules, methods=["POST"]),
        Route("/__emulator__/bulk", admin_bulk, methods=["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if state_file is not None and state_file.exists():
            org.load(exact_json.loads(state_file.read_text()))
            log.info("Loaded the org's records and rules from %s", state_file)
        yield
        if state_file is not None:
            tmp = state_file.with_suffix(".tmp")
            tmp.write_text(exact_json.dumps(org.dump()))
            tmp.replace(state_file)

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.org = org
    return app
