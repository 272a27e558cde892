"""Describe: the org has what a stream maps to, and what each mapped field takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError, SalesforceExpiredSession

from include.crm_export.config import Stream
from include.crm_export.errors import NotFound, RequestFailed, StreamConfigError
from include.crm_export.salesforce.refusals import refusal
from include.crm_export.salesforce.session import SessionRenewer

# The objects Salesforce runs assignment rules on ("AssignmentRule": "associated with a Case or Lead").
ASSIGNABLE_OBJECTS = ("Lead", "Case")


def check_stream_against_describe(
    sf: Salesforce, stream: Stream, *, renewer: SessionRenewer | None = None
) -> Described:
    """Fail before sending anything when the org does not have what the stream maps to.

    Returns each mapped field's Salesforce type (``string``, ``date``, ``datetime`` …), which the
    mapping uses to send only values the org takes.
    """
    try:
        describe = _ask(sf, renewer, lambda: getattr(sf, stream.sobject).describe(), f"describe {stream.sobject}")
    except NotFound:
        raise StreamConfigError(
            f"Stream config error in stream '{stream.name}', field 'sobject': Salesforce has no object "
            f"{stream.sobject} (or the integration user cannot see it)."
        ) from None
    fields = {f["name"].lower(): f for f in describe["fields"]}
    external = fields.get(stream.external_id_field.lower())
    if external is None or not external.get("externalId"):
        raise StreamConfigError(
            f"Stream config error in stream '{stream.name}', field 'external_id.field': "
            f"{stream.sobject}.{stream.external_id_field} is not an external id field in Salesforce."
        )
    for sf_field, _column in stream.fields:
        described = fields.get(sf_field.lower())
        if described is None:
            raise StreamConfigError(
                f"Stream config error in stream '{stream.name}', field 'fields.{sf_field}': "
                f"Salesforce object {stream.sobject} has no field {sf_field} (or the integration user cannot see it)."
            )
        if not (described.get("createable") or described.get("updateable")):
            raise StreamConfigError(
                f"Stream config error in stream '{stream.name}', field 'fields.{sf_field}': "
                f"{stream.sobject}.{sf_field} is read-only in Salesforce."
            )
    return Described(
        {sf_field: fields[sf_field.lower()].get("type", "") for sf_field, _column in stream.fields},
        external_id_case_sensitive=bool(external.get("caseSensitive")),
        external_id_numeric=external.get("type") in _NUMBER_TYPES,
        org_id=organization_id(sf, renewer=renewer),
    )


def organization_id(sf: Salesforce, *, renewer: SessionRenewer | None = None) -> str:
    """The id of the org the connection reaches (``Organization``, one row in every org; one API request).

    A SOQL query rather than the identity URL: it needs only the ``api`` scope the export has anyway, where
    the UserInfo endpoint wants ``openid`` or ``profile`` too ("UserInfo Endpoint", Salesforce Help).
    """
    answer = _ask(sf, renewer, lambda: sf.query("SELECT Id FROM Organization"), "read the org's id")
    records = answer.get("records") or []
    if not records or not records[0].get("Id"):
        raise RequestFailed("Salesforce answered no Organization record: cannot tell which org this connection reaches")
    org_id: str = records[0]["Id"][:15]  # the 15-character form names the org whichever form the org sends
    return org_id


def _ask(sf: Salesforce, renewer: SessionRenewer | None, call: Callable[[], Any], doing: str) -> Any:
    """One request at the start of a run, its session renewed once if it expired; refusals as everywhere."""
    try:
        try:
            return call()
        except SalesforceExpiredSession:
            if renewer is None:
                raise
            renewer.renew(sf)
            return call()
    except SalesforceError as exc:
        raise refusal(exc, doing=doing) from None
    except requests.exceptions.RequestException as exc:
        raise RequestFailed(f"Could not reach Salesforce to {doing}: {type(exc).__name__}") from None


_NUMBER_TYPES = ("double", "int", "long", "currency", "percent")


@dataclass(frozen=True)
class Described:
    """What describe says that the export needs: each mapped field's type, and how the external id matches."""

    field_types: dict[str, str]
    external_id_case_sensitive: bool
    org_id: str  # the org the connection reaches, 15 characters
    external_id_numeric: bool = False  # a Number external id: SOQL compares it with unquoted numbers
