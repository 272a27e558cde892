"""Object describes and field validation, as a Salesforce org applies them.

An object is declared in ``objects/<Name>.json`` with its custom fields; the
system fields every object has (Id, CreatedDate, …) are added here. Validation
follows what the REST API does with an sObject Collections upsert
(https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_composite_sobjects_collections_upsert.htm):

- a body the API cannot bind to the object (unknown field, a value of the wrong
  JSON type) fails the whole request with HTTP 400 (``INVALID_FIELD``,
  ``JSON_PARSER_ERROR``);
- a record that binds but cannot be saved fails alone, with its own
  ``statusCode`` (``REQUIRED_FIELD_MISSING``, ``STRING_TOO_LONG``, …).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from include.crm_export import exact_json

OBJECTS_DIR = Path(__file__).parent / "objects"

_TEXT_TYPES = {"string", "email", "phone", "url", "textarea", "picklist", "reference", "id"}
_NUMBER_TYPES = {"double", "currency", "percent", "int"}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_SALESFORCE_ID = re.compile(r"^[a-zA-Z0-9]{15}([a-zA-Z0-9]{3})?$")


class RequestRejected(Exception):
    """The whole request fails (HTTP status and a Salesforce error body)."""

    def __init__(self, status: int, error_code: str, message: str, fields: list[str] | None = None):
        super().__init__(f"{status} {error_code}: {message}")
        self.status = status
        self.error_code = error_code
        self.message = message
        self.fields = fields or []

    def body(self) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"message": self.message, "errorCode": self.error_code}
        if self.fields:
            body["fields"] = self.fields
        return [body]


@dataclass(frozen=True)
class RecordError:
    """One entry of a result's ``errors`` list."""

    status_code: str
    message: str
    fields: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"statusCode": self.status_code, "message": self.message, "fields": list(self.fields)}


@dataclass(frozen=True)
class ParentReference:
    """A reference field set by its parent's external id: ``"Account": {"CRM_Account_Id__c": "A-17"}``
    ("Relationship Fields in Records", Bulk API 2.0 and Bulk API Developer Guide). The org resolves it to the
    parent's Id when it saves the record (:meth:`Org.upsert`)."""

    field: str  # the reference field it sets (AccountId)
    sobject: str  # the parent's object
    external_id_field: str
    value: str

    @classmethod
    def bind(cls, schema: ObjectSchema, reference: FieldSpec, value: dict[str, Any]) -> ParentReference:
        """As the request binds it: ``attributes.type`` names the parent's object (needed when the field points
        at several); exactly one other key, the parent's field to match by. A body that cannot be bound fails
        the request as a whole."""
        attributes = value.get("attributes") or {}
        targets = reference.reference_to
        sobject = attributes.get("type") if isinstance(attributes, dict) else None
        if sobject is None:
            if len(targets) != 1:
                raise RequestRejected(
                    400,
                    "INVALID_FIELD",
                    f"The polymorphic field {reference.name} on {schema.name} needs attributes.type in "
                    f"{reference.relationship_name} to say which object it points at",
                )
            sobject = targets[0]
        if sobject not in targets:
            raise RequestRejected(
                400,
                "INVALID_FIELD",
                f"Invalid type {sobject} for {reference.relationship_name} on {schema.name}: it points at "
                f"{', '.join(targets)}",
            )
        keys = [key for key in value if key != "attributes"]
        if len(keys) != 1 or not isinstance(value[keys[0]], str | int):
            raise RequestRejected(
                400,
                "INVALID_FIELD",
                f"{reference.relationship_name} on {schema.name} must name the parent by exactly one indexed field",
            )
        return cls(reference.name, sobject, keys[0], str(value[keys[0]]))


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str
    length: int = 0
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    defaulted_on_create: bool = False
    external_id: bool = False
    unique: bool = False
    case_sensitive: bool = False  # text values compare case-insensitively unless the field says so
    custom: bool = False
    precision: int = 0
    scale: int = 0
    picklist_values: tuple[str, ...] = ()
    reference_to: tuple[str, ...] = ()
    relationship_name_given: str | None = None
    # Deleting the parent deletes this record too (describe's cascadeDelete): Contact.AccountId, as Salesforce
    # Help's "Delete Accounts" lists contacts among what goes to the Recycle Bin with an account. Else cleared.
    cascade_delete: bool = False

    @property
    def relationship_name(self) -> str | None:
        """How a request names the parent of a reference field ("Relationship Fields in Records"):
        ``AccountId`` -> ``Account``, ``Primary_Contact__c`` -> ``Primary_Contact__r``."""
        if self.type != "reference":
            return None
        if self.relationship_name_given:
            return self.relationship_name_given
        return self.name[:-3] + "__r" if self.name.endswith("__c") else self.name.removesuffix("Id")

    @property
    def required_on_create(self) -> bool:
        # How Salesforce derives "required" from a describe.
        return self.createable and not self.nillable and not self.defaulted_on_create

    def match_key(self, value: Any) -> Any:
        """The value as the org compares it: an external id text field is case-insensitive unless caseSensitive."""
        return value.lower() if isinstance(value, str) and not self.case_sensitive else value

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.name.removesuffix("__c").replace("_", " "),
            "type": self.type,
            "length": self.length,
            "precision": self.precision,
            "scale": self.scale,
            "nillable": self.nillable,
            "createable": self.createable,
            "updateable": self.updateable,
            "defaultedOnCreate": self.defaulted_on_create,
            "externalId": self.external_id,
            "unique": self.unique,
            "caseSensitive": self.case_sensitive,
            "idLookup": self.external_id or self.name == "Id",
            "custom": self.custom,
            "picklistValues": [
                {"active": True, "defaultValue": False, "label": v, "value": v} for v in self.picklist_values
            ],
            "referenceTo": list(self.reference_to),
            "relationshipName": self.relationship_name,
            "cascadeDelete": self.cascade_delete,
            "polymorphicForeignKey": len(self.reference_to) > 1,
            "soapType": _SOAP_TYPES.get(self.type, "xsd:string"),
        }


_SOAP_TYPES = {
    "boolean": "xsd:boolean",
    "date": "xsd:date",
    "datetime": "xsd:dateTime",
    "double": "xsd:double",
    "currency": "xsd:double",
    "percent": "xsd:double",
    "int": "xsd:int",
    "id": "tns:ID",
    "reference": "tns:ID",
}


def _system_fields() -> list[FieldSpec]:
    return [
        FieldSpec("Id", "id", 18, nillable=False, createable=False, updateable=False, defaulted_on_create=True),
        FieldSpec("IsDeleted", "boolean", nillable=False, createable=False, updateable=False, defaulted_on_create=True),
        FieldSpec("OwnerId", "reference", 18, nillable=False, defaulted_on_create=True, reference_to=("User",)),
        FieldSpec(
            "CreatedDate", "datetime", nillable=False, createable=False, updateable=False, defaulted_on_create=True
        ),
        FieldSpec(
            "LastModifiedDate", "datetime", nillable=False, createable=False, updateable=False, defaulted_on_create=True
        ),
        FieldSpec(
            "SystemModstamp", "datetime", nillable=False, createable=False, updateable=False, defaulted_on_create=True
        ),
    ]


@dataclass
class ObjectSchema:
    name: str
    label: str
    key_prefix: str
    custom: bool
    fields: dict[str, FieldSpec] = field(default_factory=dict)
    hidden: set[str] = field(default_factory=set)  # lower-case names the integration user cannot see

    @classmethod
    def from_declaration(cls, declaration: dict[str, Any]) -> ObjectSchema:
        fields = {f.name: f for f in _system_fields()}
        for raw in declaration["fields"]:
            spec = FieldSpec(
                name=raw["name"],
                type=raw["type"],
                length=raw.get("length", 0),
                nillable=raw.get("nillable", True),
                createable=raw.get("createable", True),
                updateable=raw.get("updateable", True),
                defaulted_on_create=raw.get("defaultedOnCreate", False),
                external_id=raw.get("externalId", False),
                unique=raw.get("unique", False),
                case_sensitive=raw.get("caseSensitive", False),
                custom=raw.get("custom", raw["name"].endswith("__c")),
                precision=raw.get("precision", 0),
                scale=raw.get("scale", 0),
                picklist_values=tuple(raw.get("picklistValues", ())),
                reference_to=tuple(raw.get("referenceTo", ())),
                relationship_name_given=raw.get("relationshipName"),
                cascade_delete=bool(raw.get("cascadeDelete", False)),
            )
            fields[spec.name] = spec
        return cls(
            name=declaration["name"],
            label=declaration.get("label", declaration["name"]),
            key_prefix=declaration["keyPrefix"],
            custom=declaration.get("custom", declaration["name"].endswith("__c")),
            fields=fields,
        )

    def field_named(self, name: str) -> FieldSpec | None:
        """The field the integration user can see by this name (case-insensitive on the wire), if any.

        A field hidden from the user by field-level security does not exist
        for it: describe leaves it out and a request naming it is refused as a
        whole with 400 INVALID_FIELD "No such column" (REST API Developer
        Guide, "Status Codes and Error Responses": errorcodes.htm).
        """
        lowered = name.lower()
        if lowered in self.hidden:
            return None
        spec = self.fields.get(name)
        if spec is not None:
            return spec
        return next((f for f in self.fields.values() if f.name.lower() == lowered), None)

    def reference_named(self, relationship: str) -> FieldSpec | None:
        """The visible reference field whose relationship name this is (case-insensitive), if any."""
        lowered = relationship.lower()
        return next(
            (
                f
                for f in self.fields.values()
                if f.relationship_name is not None
                and f.relationship_name.lower() == lowered
                and f.name.lower() not in self.hidden
            ),
            None,
        )

    def describe(self, version: str) -> dict[str, Any]:
        base = f"/services/data/v{version}/sobjects/{self.name}"
        return {
            "name": self.name,
            "label": self.label,
            "labelPlural": self.label + "s",
            "keyPrefix": self.key_prefix,
            "custom": self.custom,
            "createable": True,
            "updateable": True,
            "deletable": True,
            "queryable": True,
            "fields": [f.describe() for f in self.fields.values() if f.name.lower() not in self.hidden],
            "urls": {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"},
        }

    def bind(self, record: dict[str, Any]) -> dict[str, Any]:
        """Check that the request body can be bound to this object.

        Raises RequestRejected for problems that make Salesforce refuse the
        whole request. Returns the record's field values keyed by canonical
        field name, without ``attributes``.
        """
        attributes = record.get("attributes")
        if not isinstance(attributes, dict) or "type" not in attributes:
            raise RequestRejected(
                400, "INVALID_INPUT", "Each record in an sObject Collections request needs attributes.type"
            )
        if attributes["type"] != self.name:
            raise RequestRejected(
                400,
                "INVALID_TYPE",
                f"The record type {attributes['type']} does not match the request URI's object {self.name}",
            )
        bound: dict[str, Any] = {}
        for name, value in record.items():
            if name == "attributes":
                continue
            spec = self.field_named(name)
            if spec is None and isinstance(value, dict):
                reference = self.reference_named(name)
                if reference is not None:
                    parent = ParentReference.bind(self, reference, value)
                    bound[reference.name] = parent
                    continue
            if spec is None:
                raise RequestRejected(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {self.name}")
            if value == "" and spec.type in _TEXT_TYPES:
                value = None  # the org stores an empty text as no value
            if value is not None and not _json_type_ok(spec, value):
                # As an org answers it: the request as a whole, and no fields (the message has the value).
                raise RequestRejected(
                    400,
                    "JSON_PARSER_ERROR",
                    f"Cannot deserialize instance of {spec.type} from {_json_kind(value)} value "
                    f"{exact_json.dumps(value)} or request may be missing a required field",
                )
            bound[spec.name] = value
        return bound

    def record_errors(self, values: dict[str, Any], *, creating: bool) -> list[RecordError]:
        """Errors that make this one record fail, in the order Salesforce reports them."""
        errors: list[RecordError] = []
        for name, value in values.items():
            spec = self.fields[name]
            if not (spec.createable if creating else spec.updateable) and not spec.external_id:
                errors.append(
                    RecordError(
                        "INVALID_FIELD_FOR_INSERT_UPDATE",
                        f"Unable to create/update fields: {name}. Please check the security settings "
                        "of this field and verify that it is read/write for your profile or permission set.",
                        (name,),
                    )
                )
                continue
            if value is None or isinstance(value, ParentReference):
                continue
            if spec.type in _TEXT_TYPES and spec.length and len(value) > spec.length:
                errors.append(
                    RecordError(
                        "STRING_TOO_LONG",
                        f"{spec.name}: data value too large: {value[:100]} (max length={spec.length})",
                        (name,),
                    )
                )
            elif spec.type == "email" and not _EMAIL.match(value):
                errors.append(
                    RecordError("INVALID_EMAIL_ADDRESS", f"{spec.name}: invalid email address: {value}", (name,))
                )
            elif spec.type == "reference" and not _SALESFORCE_ID.match(value):
                errors.append(RecordError("MALFORMED_ID", f"{spec.name}: id value of incorrect type: {value}", (name,)))
        missing = [
            spec.name
            for spec in self.fields.values()
            if spec.required_on_create
            and (
                (creating and values.get(spec.name) is None)
                or (not creating and spec.name in values and values[spec.name] is None)
            )
        ]
        if missing:
            errors.append(
                RecordError(
                    "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]", tuple(missing)
                )
            )
        return errors


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "VALUE_TRUE" if value else "VALUE_FALSE"
    if isinstance(value, int | float | Decimal):
        return "VALUE_NUMBER"
    if isinstance(value, str):
        return "VALUE_STRING"
    if isinstance(value, list):
        return "START_ARRAY"
    return "START_OBJECT"


def _json_type_ok(spec: FieldSpec, value: Any) -> bool:
    if spec.type in _TEXT_TYPES:
        return isinstance(value, str)
    if spec.type == "boolean":
        return isinstance(value, bool)
    if spec.type in _NUMBER_TYPES:
        if isinstance(value, bool):
            return False
        if isinstance(value, int | float | Decimal):
            return True
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                return False
            return True
        return False
    if spec.type == "date":
        return isinstance(value, str) and _valid(_DATE, value, lambda v: date.fromisoformat(v))
    if spec.type == "datetime":
        return isinstance(value, str) and _valid(
            _DATETIME, value, lambda v: datetime.fromisoformat(v.replace("Z", "+00:00"))
        )
    return True


# The formats the REST API takes ("Valid Date and DateTime Formats", SOQL and SOSL Reference; ISO 8601 with the
# separators and, for a dateTime, its offset). Python's fromisoformat is kinder: it takes "20240730" and
# "2024-07-30 20:54:16", which an org refuses, so the shape is checked first. Where the docs are silent (an
# offset-less dateTime) the stricter answer is chosen: refused.
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?(Z|[+-]\d{2}:?\d{2})$")


def _valid(shape: re.Pattern[str], value: str, parse: Any) -> bool:
    if not shape.match(value):
        return False
    try:
        parse(re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", value))  # +0000 as Python reads it: +00:00
    except ValueError:
        return False
    return True


def load_objects(directory: Path = OBJECTS_DIR) -> dict[str, ObjectSchema]:
    objects = {}
    for path in sorted(directory.glob("*.json")):
        schema = ObjectSchema.from_declaration(json.loads(path.read_text()))
        objects[schema.name] = schema
    return objects
