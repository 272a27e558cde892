"""The emulated org's state: objects, records, rules, sessions and counters.

Everything here is plain Python with no I/O, so the web layer stays thin and
the rules can be tested directly.
"""

from __future__ import annotations

import secrets
import string
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from devstack.emulator import soql
from devstack.emulator.bulk import BulkIngest
from devstack.emulator.rules import Fault, RecordRule, first_record_error, parse_rule
from devstack.emulator.schema import (
    FieldSpec,
    ObjectSchema,
    ParentReference,
    RecordError,
    RequestRejected,
    load_objects,
)
from devstack.emulator.timing import Timing

MAX_COLLECTION_RECORDS = 200
QUERY_BATCH_SIZE = 2000
DAILY_API_REQUESTS = 1_000_000
DEFAULT_ORG_ID = "00D000000000001AAA"
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase

ROLLED_BACK = RecordError(
    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "Record rolled back because not all records were valid and the request was using AllOrNone header",
)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


# Objects that have assignment rules ("AssignmentRule": "Represents an assignment rule associated with a Case or
# Lead"); the emulator serves Lead.
ASSIGNABLE = ("Lead", "Case")


@dataclass
class AssignmentRule:
    id: str
    sobject: str
    owner_id: str  # every record the rule runs on goes to this user
    active: bool

    def as_row(self) -> dict[str, Any]:
        return {"Id": self.id, "Name": f"{self.sobject} rule", "SobjectType": self.sobject, "Active": self.active}


@dataclass(frozen=True)
class Assign:
    """The assignment rule a write runs (None: none), and whether only on created records."""

    rule: AssignmentRule | None
    created_only: bool = False


class Org:
    def __init__(self, *, access_token: str, client_id: str, client_secret: str) -> None:
        self.initial_token = access_token
        self.client_id = client_id
        self.client_secret = client_secret
        self.objects: dict[str, ObjectSchema] = load_objects()
        self.reset()

    def reset(self) -> None:
        """Forget records, rules, counters and extra sessions; keep the objects."""
        self.records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in self.objects}
        self.recycle_bin: dict[str, str] = {}  # deleted record id -> its object
        self.hard_delete_allowed = False  # the integration user's "Bulk API Hard Delete" permission
        self.by_external_id: dict[tuple[str, str], dict[str, str]] = {}
        self.record_rules: list[RecordRule] = []
        self.faults: list[Fault] = []
        self.tokens: set[str] = {self.initial_token}
        self.counters: Counter[str] = Counter()
        self.cursors: dict[str, tuple[str, list[str], list[dict[str, Any]]]] = {}
        self._sequence = 0
        self.daily_api_requests = DAILY_API_REQUESTS
        self.org_id = DEFAULT_ORG_ID  # a sandbox refresh gives the same URL a new org (admin: set_org_id)
        # Lead and Case assignment rules (admin: add_assignment_rule): id -> AssignmentRule
        self.assignment_rules: dict[str, AssignmentRule] = {}
        self.api_used_elsewhere = 0
        self.pending_access: list[list[Any]] = []  # [upserts still to serve, schema, field, visible]
        self.timing = Timing()  # how long requests take (none by default)
        if getattr(self, "bulk", None) is not None:
            self.bulk.cancel_all()
        self.bulk = BulkIngest(self)  # Bulk API 2.0 ingest jobs
        # object -> (records, how): after that many records its next job fails ("fail") or completes without
        # recording the rest's results ("unrecorded")
        self.bulk_failures: dict[str, tuple[int, str]] = {}
        self.peak_in_flight = 0  # most API requests served at once since the timing was set
        for schema in self.objects.values():
            schema.hidden.clear()

    def bulk_failure(self, sobject: str) -> tuple[int, str] | None:
        """After how many records the next job on ``sobject`` fails or stops recording results (once), if asked."""
        return self.bulk_failures.pop(sobject, None)

    def set_field_access(self, sobject: str, field: str, *, visible: bool, after_requests: int = 0) -> dict[str, Any]:
        """Grant or revoke the integration user's field-level security on one field.

        ``after_requests``: only once that many more collection upserts were
        served, as when an admin changes it in the middle of an export run.
        """
        schema = self.schema(sobject)
        if field.lower() not in {name.lower() for name in schema.fields}:
            raise RequestRejected(400, "INVALID_FIELD", f"No such field {sobject}.{field}")
        if after_requests > 0:
            self.pending_access.append([after_requests, schema, field.lower(), visible])
        else:
            (schema.hidden.discard if visible else schema.hidden.add)(field.lower())
        return {"object": sobject, "field": field, "visible": visible, "after_requests": after_requests}

    def _apply_pending_access(self) -> None:
        for change in list(self.pending_access):
            if change[0] <= 0:
                _, schema, field, visible = change
                (schema.hidden.discard if visible else schema.hidden.add)(field)
                self.pending_access.remove(change)
            else:
                change[0] -= 1

    # sessions

    def token_valid(self, authorization: str | None) -> bool:
        if not authorization or not authorization.startswith("Bearer "):
            return False
        return authorization.removeprefix("Bearer ").strip() in self.tokens

    def issue_token(self, client_id: str | None, client_secret: str | None) -> str:
        if client_id != self.client_id or client_secret != self.client_secret:
            raise RequestRejected(400, "invalid_client", "invalid client credentials")
        token = "00D" + secrets.token_urlsafe(24)
        self.tokens.add(token)
        self.counters["sessions_issued"] += 1
        return token

    def expire_sessions(self) -> None:
        self.tokens.clear()

    # rules

    def add_rule(self, raw: dict[str, Any]) -> dict[str, Any]:
        rule = parse_rule(raw)
        if isinstance(rule, Fault):
            self.faults.append(rule)
        else:
            if rule.object and rule.object not in self.objects:
                raise RequestRejected(400, "NOT_FOUND", f"The emulator has no object {rule.object}")
            self.record_rules.append(rule)
        return rule.as_json()

    def remove_rule(self, rule_id: int) -> bool:
        before = len(self.record_rules) + len(self.faults)
        self.record_rules = [r for r in self.record_rules if r.id != rule_id]
        self.faults = [f for f in self.faults if f.id != rule_id]
        return before != len(self.record_rules) + len(self.faults)

    def clear_rules(self) -> None:
        self.record_rules.clear()
        self.faults.clear()

    def rules_json(self) -> list[dict[str, Any]]:
        return [r.as_json() for r in self.record_rules] + [f.as_json() for f in self.faults]

    def faults_for(self, method: str, path: str) -> list[Fault]:
        """The faults that fire for this request (each fault counts the request)."""
        return [f for f in self.faults if f.applies(method, path)]

    # objects and records

    def schema(self, name: str) -> ObjectSchema:
        try:
            return self.objects[name]
        except KeyError:
            raise RequestRejected(404, "NOT_FOUND", "The requested resource does not exist") from None

    def _new_id(self, schema: ObjectSchema) -> str:
        self._sequence += 1
        number, digits = self._sequence, []
        while number:
            number, remainder = divmod(number, 62)
            digits.append(_BASE62[remainder])
        body = "".join(reversed(digits)).rjust(12, "0")
        return f"{schema.key_prefix}{body}AAA"

    def upsert(
        self, sobject: str, external_field: str, body: Any, *, assign: Assign | None = None
    ) -> list[dict[str, Any]]:
        """``assign``: the assignment rule the request asks for (:meth:`rest_assignment`, :meth:`bulk_assignment`)."""
        self._apply_pending_access()
        schema = self.schema(sobject)
        ext_spec = schema.field_named(external_field)
        if ext_spec is None or not ext_spec.external_id:
            raise RequestRejected(
                404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {external_field}"
            )
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise RequestRejected(400, "JSON_PARSER_ERROR", "The request body needs a 'records' array")
        records = body["records"]
        if len(records) > MAX_COLLECTION_RECORDS:
            raise RequestRejected(
                400,
                "EXCEEDED_ID_LIMIT",
                f"record limit reached. cannot submit more than {MAX_COLLECTION_RECORDS} records into this call",
            )
        all_or_none = body.get("allOrNone", False)
        if not isinstance(all_or_none, bool):
            raise RequestRejected(400, "JSON_PARSER_ERROR", "allOrNone must be true or false")

        bound = [schema.bind(record) for record in records]
        for values in bound:
            for value in values.values():
                if isinstance(value, ParentReference):
                    self._parent_index(value)  # a parent field no request could match by fails it as a whole
        keys = [values.get(ext_spec.name) for values in bound]
        # Matched as the org matches them: case-insensitively unless the field is case sensitive.
        seen = Counter(ext_spec.match_key(k) for k in keys if k is not None)
        index = self.by_external_id.setdefault((sobject, ext_spec.name), {})

        outcomes: list[tuple[str | None, list[RecordError]]] = []
        resolved = []
        for values in bound:
            values, missing = self._resolve_parents(values)
            resolved.append((values, missing))
        bound = [values for values, _ in resolved]
        for (values, missing), key in zip(resolved, keys, strict=True):
            existing = index.get(ext_spec.match_key(key)) if key is not None else None
            if missing is not None:
                errors = [missing]
            elif key is None or key == "":
                errors = [RecordError("MISSING_ARGUMENT", f"{ext_spec.name} not specified", (ext_spec.name,))]
            elif seen[ext_spec.match_key(key)] > 1:
                errors = [RecordError("DUPLICATE_VALUE", f"Duplicate external id specified: {key}", (ext_spec.name,))]
            else:
                errors = schema.record_errors(values, creating=existing is None)
                if not errors:
                    rule_error = first_record_error(self.record_rules, sobject, str(key), values, existing)
                    if rule_error is not None:
                        errors = [rule_error]
            outcomes.append((existing, errors))

        failed = any(errors for _, errors in outcomes)
        results = []
        for (existing, errors), values, key in zip(outcomes, bound, keys, strict=True):
            if errors or (all_or_none and failed):
                for error in errors or [ROLLED_BACK]:
                    self.counters[f"record_errors.{error.status_code}"] += 1
                results.append({"success": False, "errors": [e.as_json() for e in errors or [ROLLED_BACK]]})
                continue
            now = _now()
            if existing is None:
                record_id = self._new_id(schema)
                stored = {
                    "Id": record_id,
                    "IsDeleted": False,
                    "OwnerId": "005000000000001AAA",
                    "CreatedDate": now,
                    **{f.name: False for f in schema.fields.values() if f.type == "boolean" and f.defaulted_on_create},
                }
                self.records[sobject][record_id] = stored
                index[ext_spec.match_key(key)] = record_id
                self.counters["records_created"] += 1
            else:
                record_id = existing
                stored = self.records[sobject][record_id]
                self.counters["records_updated"] += 1
            stored.update(values)
            if assign is not None and assign.rule is not None and (existing is None or not assign.created_only):
                stored["OwnerId"] = assign.rule.owner_id  # the rule decides the owner, whatever was sent
            stored["LastModifiedDate"] = now
            stored["SystemModstamp"] = now
            results.append({"id": record_id, "success": True, "errors": [], "created": existing is None})
        return results

    def _parent_index(self, reference: ParentReference) -> tuple[FieldSpec, dict[str, str]]:
        """The parent object's external id field and its index; a field that is not one fails the request."""
        parent = self.schema(reference.sobject)
        spec = parent.field_named(reference.external_id_field)
        if spec is None or not spec.external_id:
            raise RequestRejected(
                400,
                "INVALID_FIELD",
                f"Field name provided, {reference.external_id_field} is not an External ID or indexed field for "
                f"{reference.sobject}",
            )
        return spec, self.by_external_id.setdefault((parent.name, spec.name), {})

    def _resolve_parents(self, values: dict[str, Any]) -> tuple[dict[str, Any], RecordError | None]:
        """Each parent named by external id as its Id. A parent no record matches fails this record alone, with
        the message a real org gives (INVALID_FIELD, "Foreign key external ID: … not found for field … in entity
        …"; the code is the one orgs answer with, the REST guide lists no code for it)."""
        if not any(isinstance(value, ParentReference) for value in values.values()):
            return values, None
        out = dict(values)
        for name, value in values.items():
            if not isinstance(value, ParentReference):
                continue
            spec, index = self._parent_index(value)
            parent_id = index.get(spec.match_key(value.value))
            if parent_id is None:
                return out, RecordError(
                    "INVALID_FIELD",
                    f"Foreign key external ID: {value.value} not found for field {spec.name} in entity {value.sobject}",
                )
            out[name] = parent_id
        return out, None

    def delete_record(self, sobject: str, record_id: str) -> dict[str, int]:
        """Delete a record as someone in the org would: {"lookups_cleared", "children_deleted"}.

        A child whose lookup cascades (describe's ``cascadeDelete``: a Contact of a deleted Account, which
        Salesforce Help's "Delete Accounts" lists among what goes with it) is deleted too; any other lookup to
        the record is cleared, the default of a lookup relationship ("Clear the value of this field", Salesforce
        Help: "Lookup Relationship Options").
        """
        schema = self.schema(sobject)
        if record_id not in self.records[schema.name]:
            raise RequestRejected(404, "NOT_FOUND", "The requested resource does not exist")
        taken = list(dict.fromkeys(self._cascade(schema.name, record_id)))
        gone = {taken_id for _, taken_id in taken}
        for taken_object, taken_id in taken:
            del self.records[taken_object][taken_id]
            self.recycle_bin[taken_id] = taken_object
            for (indexed_object, _field), index in self.by_external_id.items():
                if indexed_object == taken_object:
                    for match_key in [k for k, v in index.items() if v == taken_id]:
                        del index[match_key]
        cleared = 0
        for child in self.objects.values():
            for spec in child.fields.values():
                if spec.type == "reference" and not spec.cascade_delete:
                    for stored in self.records[child.name].values():
                        if stored.get(spec.name) in gone:
                            stored[spec.name] = None
                            cleared += 1
        return {"lookups_cleared": cleared, "children_deleted": len(taken) - 1}

    def collection_delete(self, ids: list[str], *, all_or_none: bool = False) -> list[dict[str, Any]]:
        """``DELETE /composite/sobjects?ids=…``: one DeleteResult per id, in the order given ("Delete Records Using
        sObject Collections", REST API Developer Guide): up to 200 ids of any objects; with ``allOrNone`` one
        failure rolls every delete back.

        Per id: a deleted record (here, or with a parent that cascades) answers ``ENTITY_IS_DELETED``; an id of
        no record ``INVALID_CROSS_REFERENCE_KEY``; one of no object ``MALFORMED_ID`` (StatusCode values of
        the SOAP API Developer Guide; the guide's example shows MALFORMED_ID). Delete rules (``"on": "delete"``)
        refuse as an org's dependencies, locks and sharing do. A failed item carries no id, as in the guide's
        example; the docs say nothing of the Recycle Bin's effect on a later upsert, so a deleted record's
        external id is free again (the stricter reading for a sync: the next upsert creates a new record).
        """
        if not ids:
            raise RequestRejected(400, "MISSING_ARGUMENT", "ids parameter is required")
        if len(ids) > MAX_COLLECTION_RECORDS:
            raise RequestRejected(
                400,
                "EXCEEDED_ID_LIMIT",
                f"record limit reached. cannot submit more than {MAX_COLLECTION_RECORDS} records into this call",
            )
        self._apply_pending_access()
        checked: list[tuple[str | None, str | None, RecordError | None]] = []  # 18-character id, object, error
        going: set[str] = set()  # every record the deletes so far take with them (cascades included)
        for given in ids:
            record_id, sobject = self._find_id(given)
            error: RecordError | None = None
            if sobject is None:
                error = RecordError("MALFORMED_ID", f"malformed id {given}", ())
            elif record_id is not None and (record_id in self.recycle_bin or record_id in going):
                error = RecordError("ENTITY_IS_DELETED", "entity is deleted", ())
            elif record_id is None:
                error = RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", ())
            else:
                taken = self._cascade(sobject, record_id)
                error = self._delete_refusal(taken)  # a child that cannot go keeps its parent too
                if error is None:
                    going.update(child_id for _, child_id in taken)
            checked.append((record_id, sobject, error))
        failed = any(error is not None for _, _, error in checked)
        results: list[dict[str, Any]] = []
        for record_id, sobject, error in checked:
            if error is None and all_or_none and failed:
                error = RecordError(
                    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                    "Record rolled back because not all records were valid and the request was using AllOrNone header",
                    (),
                )
            if error is not None:
                self.counters[f"record_errors.{error.status_code}"] += 1
                results.append({"success": False, "errors": [error.as_json()]})
                continue
            assert sobject is not None
            assert record_id is not None
            self.delete_record(sobject, record_id)
            self.counters["records_deleted"] += 1
            results.append({"id": record_id, "success": True, "errors": []})
        return results

    def _delete_refusal(self, taken: list[tuple[str, str]]) -> RecordError | None:
        for sobject, record_id in taken:
            stored = self.records[sobject][record_id]
            error = first_record_error(self.record_rules, sobject, record_id, stored, record_id, "delete")
            if error is not None:
                return error
        return None

    def _find_id(self, given: str) -> tuple[str | None, str | None]:
        """(the record's 18-character id or None, its object or None for a malformed id): Salesforce takes an id
        in its 15- or 18-character form."""
        if len(given) not in (15, 18):
            return None, None
        sobject = next((name for name, schema in self.objects.items() if schema.key_prefix == given[:3]), None)
        if sobject is None:
            return None, None
        if len(given) == 18:
            known = given in self.records[sobject] or given in self.recycle_bin
            return (given if known else None), sobject
        found = next((i for i in [*self.records[sobject], *self.recycle_bin] if i[:15] == given), None)
        return found, sobject

    def _cascade(self, sobject: str, record_id: str) -> list[tuple[str, str]]:
        """The record and every record its delete takes with it (lookups with cascadeDelete), parents first."""
        taken = [(sobject, record_id)]
        schema = self.schema(sobject)
        for child in self.objects.values():
            for spec in child.fields.values():
                if spec.type == "reference" and spec.cascade_delete and schema.name in spec.reference_to:
                    for child_id, stored in self.records[child.name].items():
                        if stored.get(spec.name) == record_id:
                            taken += self._cascade(child.name, child_id)
        return taken

    def get_by_external_id(self, sobject: str, field: str, value: str) -> dict[str, Any]:
        schema = self.schema(sobject)
        spec = schema.field_named(field)
        if spec is None or not spec.external_id:
            raise RequestRejected(
                404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {field}"
            )
        record_id = self.by_external_id.get((sobject, spec.name), {}).get(spec.match_key(value))
        if record_id is None:
            raise RequestRejected(404, "NOT_FOUND", "The requested resource does not exist")
        return self.records[sobject][record_id]

    def get_by_id(self, sobject: str, record_id: str) -> dict[str, Any]:
        """A record by Id; one in the Recycle Bin answers 404 ``ENTITY_IS_DELETED`` ("Status Codes and Error
        Responses", REST API Developer Guide: the record was deleted), one never known 404 ``NOT_FOUND``."""
        self.schema(sobject)
        found, _ = self._find_id(record_id)
        if found is not None and found in self.recycle_bin:
            raise RequestRejected(404, "ENTITY_IS_DELETED", "entity is deleted")
        try:
            return self.records[sobject][found or record_id]
        except KeyError:
            raise RequestRejected(404, "NOT_FOUND", "The requested resource does not exist") from None

    # assignment rules

    def add_assignment_rule(self, sobject: str, owner_id: str, *, active: bool = True) -> AssignmentRule:
        """An assignment rule that gives every record it runs on to ``owner_id``; at most one active per object,
        as in Setup (activating one deactivates the other)."""
        if sobject not in ASSIGNABLE:
            raise RequestRejected(400, "INVALID_TYPE", f"Assignment rules exist for {', '.join(ASSIGNABLE)} only")
        if active:
            for rule in self.assignment_rules.values():
                if rule.sobject == sobject:
                    rule.active = False
        rule = AssignmentRule(f"01Q{len(self.assignment_rules) + 1:012d}AAA", sobject, owner_id, active)
        self.assignment_rules[rule.id] = rule
        return rule

    def rest_assignment(self, sobject: str, header: str | None) -> Assign:
        """REST API "Assignment Rule Header": ``Sforce-Auto-Assign`` absent or TRUE runs the object's active rule
        on created and updated records; FALSE runs none; an AssignmentRule id runs that rule on created records.
        TRUE and FALSE are not case-sensitive."""
        value = (header or "TRUE").strip()
        if value.upper() == "FALSE":
            return Assign(None)
        if value.upper() == "TRUE":
            return Assign(self._active_rule(sobject))
        rule = self.assignment_rules.get(value)
        if rule is None or rule.sobject != sobject:
            raise RequestRejected(
                400, "MALFORMED_ID", f"Sforce-Auto-Assign: invalid assignment rule id {value!r} for {sobject}"
            )
        return Assign(rule, created_only=True)

    def bulk_assignment(self, rule_id: str | None) -> Assign:
        """Bulk API 2.0 "Create a Job": ``assignmentRuleId`` is the rule to run (active or not). Without it the
        docs name no rule to run, and the emulator runs none (the header of the REST API does not apply)."""
        return Assign(None if rule_id is None else self.assignment_rules[rule_id])

    def _active_rule(self, sobject: str) -> AssignmentRule | None:
        return next((r for r in self.assignment_rules.values() if r.sobject == sobject and r.active), None)

    # queries

    def query(self, text: str, version: str) -> dict[str, Any]:
        parsed = soql.parse(text)
        if parsed.object.lower() == "organization":
            # One read-only row in every org ("Organization", Object Reference); only its Id is modelled.
            if any(field.lower() != "id" for field in parsed.fields):
                raise RequestRejected(400, "INVALID_FIELD", "The emulator's Organization has only the field Id")
            return self._page("Organization", ["Id"], [{"Id": self.org_id}], version, total=1)
        if parsed.object.lower() == "assignmentrule":
            # Read-only ("AssignmentRule", Object Reference): Id, Name, SobjectType, Active.
            names = {name.lower(): name for name in ("Id", "Name", "SobjectType", "Active")}
            rows = soql.run(parsed, [rule.as_row() for rule in self.assignment_rules.values()], names)
            return self._page("AssignmentRule", soql.selected_fields(parsed, names), rows, version, total=len(rows))
        schema = self.schema(parsed.object)
        names = {name.lower(): name for name in schema.fields}
        rows = soql.run(parsed, list(self.records[parsed.object].values()), names)
        if parsed.count_only:
            return {"totalSize": len(rows), "done": True, "records": []}
        fields = soql.selected_fields(parsed, names)
        return self._page(parsed.object, fields, rows, version, total=len(rows))

    def query_more(self, cursor: str, version: str) -> dict[str, Any]:
        try:
            sobject, fields, rows = self.cursors.pop(cursor.split("-")[0])
        except KeyError:
            raise RequestRejected(400, "INVALID_QUERY_LOCATOR", "invalid query locator") from None
        total = int(cursor.split("-")[1]) + len(rows) if "-" in cursor else len(rows)
        return self._page(sobject, fields, rows, version, total=total)

    def _page(
        self, sobject: str, fields: list[str], rows: list[dict[str, Any]], version: str, *, total: int
    ) -> dict[str, Any]:
        page, rest = rows[:QUERY_BATCH_SIZE], rows[QUERY_BATCH_SIZE:]
        body: dict[str, Any] = {
            "totalSize": total,
            "done": not rest,
            "records": [
                {
                    "attributes": {"type": sobject, "url": f"/services/data/v{version}/sobjects/{sobject}/{r['Id']}"},
                    **{name: r.get(name) for name in fields},
                }
                for r in page
            ],
        }
        if rest:
            locator = "01g" + secrets.token_hex(6)
            self.cursors[locator] = (sobject, fields, rest)
            body["nextRecordsUrl"] = f"/services/data/v{version}/query/{locator}-{total - len(rest)}"
        return body

    @property
    def api_used(self) -> int:
        """API requests counted in the org's rolling 24-hour window (its other integrations' included)."""
        return self.counters["api_requests"] + self.api_used_elsewhere

    def set_api_usage(self, *, daily_api_requests: int | None = None, used_elsewhere: int | None = None) -> None:
        if daily_api_requests is not None:
            self.daily_api_requests = daily_api_requests
        if used_elsewhere is not None:
            self.api_used_elsewhere = used_elsewhere

    def limit_info(self) -> str:
        """The Sforce-Limit-Info header every REST response carries (REST API Developer Guide, "Limit Info Header")."""
        return f"api-usage={self.api_used}/{self.daily_api_requests}"

    def limits(self) -> dict[str, Any]:
        used, most = self.api_used, self.daily_api_requests
        return {
            "DailyApiRequests": {"Max": most, "Remaining": max(most - used, 0)},
            "DailyBulkApiBatches": {"Max": 15000, "Remaining": 15000},
            "DataStorageMB": {"Max": 1024, "Remaining": 1024},
        }

    def dump(self) -> dict[str, Any]:
        """Records and record rules, to survive a restart of a local run."""
        return {
            "records": self.records,
            "sequence": self._sequence,
            "recycle_bin": self.recycle_bin,
            "record_rules": [
                {k: v for k, v in rule.as_json().items() if k not in ("id", "kind", "statusCode")}
                for rule in self.record_rules
            ],
        }

    def load(self, state: dict[str, Any]) -> None:
        self.reset()
        for sobject, records in state.get("records", {}).items():
            if sobject not in self.objects:
                continue
            self.records[sobject] = records
            for spec in self.objects[sobject].fields.values():
                if spec.external_id:
                    self.by_external_id[(sobject, spec.name)] = {
                        spec.match_key(r[spec.name]): record_id
                        for record_id, r in records.items()
                        if r.get(spec.name) is not None
                    }
        self._sequence = state.get("sequence", 0)
        self.recycle_bin = dict(state.get("recycle_bin", {}))
        for raw in state.get("record_rules", []):
            self.add_rule(raw)

    def snapshot(self, sobject: str) -> list[dict[str, Any]]:
        self.schema(sobject)
        return list(self.records[sobject].values())
