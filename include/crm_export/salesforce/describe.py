"""Describe: the org has what a stream maps to, and what each mapped field takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError, SalesforceExpiredSession

from include.crm_export.config import Lookup, Stream
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
    relationships = {
        lookup.field: _check_lookup(sf, stream, lookup, fields[lookup.field.lower()], renewer)
        for lookup in stream.lookups
    }
    return Described(
        FieldTypes(
            {sf_field: fields[sf_field.lower()].get("type", "") for sf_field, _column in stream.fields},
            relationships=relationships,
        ),
        external_id_case_sensitive=bool(external.get("caseSensitive")),
        external_id_numeric=external.get("type") in _NUMBER_TYPES,
        org_id=organization_id(sf, renewer=renewer),
    )


class FieldTypes(dict[str, str]):
    """Each mapped field's Salesforce type, and each lookup field's relationship as the payload names it."""

    def __init__(self, types: dict[str, str], *, relationships: dict[str, Relationship] | None = None) -> None:
        super().__init__(types)
        self.relationships = relationships or {}


@dataclass(frozen=True)
class Relationship:
    """A lookup field's relationship from describe: ``relationshipName``, and whether it points at more than
    one object (polymorphic: WhoId, WhatId, OwnerId), which a Bulk API 2.0 header must then name."""

    name: str
    polymorphic: bool = False


def _check_lookup(
    sf: Salesforce, stream: Stream, lookup: Lookup, described: dict[str, Any], renewer: SessionRenewer | None
) -> Relationship:
    """A lookup field must be a reference to the parent's object, and the parent's field an external id."""
    where = f"Stream config error in stream '{stream.name}', field 'fields.{lookup.field}':"
    targets = [str(name) for name in described.get("referenceTo") or []]
    if described.get("type") != "reference" or not described.get("relationshipName"):
        raise StreamConfigError(
            f"{where} {stream.sobject}.{lookup.field} is not a lookup field in Salesforce (its type is "
            f"{described.get('type')}); map it as a plain field, or name the lookup field (AccountId, not Account)."
        )
    if lookup.object.lower() not in (name.lower() for name in targets):
        raise StreamConfigError(
            f"{where} {stream.sobject}.{lookup.field} points at {' or '.join(targets) or 'no object'}, not at "
            f"{lookup.object}{_from_parent(lookup)}."
        )
    try:
        parent = _ask(sf, renewer, lambda: getattr(sf, lookup.object).describe(), f"describe {lookup.object}")
    except NotFound:
        raise StreamConfigError(
            f"{where} Salesforce has no object {lookup.object} (or the integration user cannot see it)."
        ) from None
    external = next((f for f in parent["fields"] if f["name"].lower() == lookup.external_id_field.lower()), None)
    if external is None or not external.get("externalId"):
        raise StreamConfigError(
            f"{where} {lookup.object}.{lookup.external_id_field} is not an external id field in Salesforce, so a "
            f"record cannot point at its parent by it{_from_parent(lookup)}."
        )
    return Relationship(str(described["relationshipName"]), polymorphic=len(targets) > 1)


def _from_parent(lookup: Lookup) -> str:
    return "" if lookup.parent is None else f" (the object and external id of stream '{lookup.parent.name}')"


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

    field_types: FieldTypes
    external_id_case_sensitive: bool
    org_id: str  # the org the connection reaches, 15 characters
    external_id_numeric: bool = False  # a Number external id: SOQL compares it with unquoted numbers
