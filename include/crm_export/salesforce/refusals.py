"""The one translation of a Salesforce refusal into a typed failure, for every client.

REST, sObject Collections, Bulk API 2.0 and describe all hand a
simple-salesforce ``SalesforceError`` to :func:`refusal`; callers branch on the
class it returns (``errors.py``), never on message text, so each kind of
failure has the same Airflow outcome and the same sentence for the person on
call, whichever path met it.
"""

from __future__ import annotations

from typing import Any

from simple_salesforce.exceptions import (
    SalesforceError,
    SalesforceExpiredSession,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from include.crm_export.errors import (
    API_ACCESS_CODES,
    NotFound,
    RequestFailed,
    RequestLimitExceeded,
    RequestRefused,
    ServerBusy,
    SessionExpired,
)
from include.crm_export.names import SALESFORCE_CONN_ID


def refusal(exc: SalesforceError, *, doing: str) -> RequestFailed:
    """The one translation of a Salesforce refusal, for every client (REST, Collections, Bulk API 2.0, describe).

    Each kind gets its class, so it has the same Airflow outcome whichever path
    met it (``tasks.airflow_outcome``), and a sentence for the person on call.
    A 400 is the caller's to read first (the Collections path isolates the
    records it is about); a 401 is the caller's to renew first.
    """
    code = error_code(exc.content)
    said = error_message(exc.content)
    if isinstance(exc, SalesforceExpiredSession):
        return SessionExpired(EXPIRED_MESSAGE, status=401, code="INVALID_SESSION_ID")
    if isinstance(exc, SalesforceRefusedRequest) and code in API_ACCESS_CODES:
        return api_access_refused(code, exc.content)
    if isinstance(exc, SalesforceRefusedRequest) and code == "REQUEST_LIMIT_EXCEEDED" and _concurrent(exc):
        return ServerBusy(
            f"Salesforce refused to {doing} (HTTP 403 {code}): {said}. Too many long-running requests are going on "
            "in the org at once",
            status=403,
            code=code,
        )
    if isinstance(exc, SalesforceRefusedRequest) and code == "REQUEST_LIMIT_EXCEEDED":
        return RequestLimitExceeded(
            f"Salesforce refused to {doing} (HTTP 403 {code}): {said}. The org's API request allowance (a rolling "
            "24-hour window) is used up by this and its other integrations.",
            status=403,
            code=code,
        )
    if isinstance(exc, SalesforceResourceNotFound):
        return NotFound(f"Salesforce answered 404 when asked to {doing}: {said}", status=404, code=code)
    status = exc.status or 0
    failed = ServerBusy if 500 <= status <= 599 else RequestFailed
    return failed(f"Salesforce could not {doing} (HTTP {exc.status} {code}): {said}.", status=exc.status, code=code)


def _concurrent(exc: SalesforceError) -> bool:
    """REQUEST_LIMIT_EXCEEDED for too many long-running requests at once, not for the used-up daily allowance."""
    return "Concurrent" in error_message(exc.content)


EXPIRED_MESSAGE = (
    "Salesforce answered 401 INVALID_SESSION_ID: the session of the stream's Salesforce connection (its "
    f"`connection:` setting, '{SALESFORCE_CONN_ID}' unless set) expired or was revoked, and the connection has no "
    "way to renew it. Put a fresh access token in the connection (or configure an auth flow that renews: "
    "username/password, JWT, or the oauth_client_id/oauth_client_secret extras), then clear this task."
)


def api_access_refused(code: str, content: Any) -> RequestRefused:
    return RequestRefused(
        f"Salesforce refused the request (HTTP 403 {code}): {error_message(content)}. {API_ACCESS_CODES[code]} "
        "Retrying cannot help until then; clear this task afterwards.",
        status=403,
        code=code,
    )


def first_error(content: Any) -> dict[str, Any]:
    """The first entry of a Salesforce error body (a list of {errorCode, message, fields})."""
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return content[0]
    return {}


def error_code(content: Any, *, default: str = "UNKNOWN") -> str:
    return str(first_error(content).get("errorCode", default))


def error_message(content: Any) -> str:
    first = first_error(content)
    return str(first.get("message", "") if first else content)[:500]
