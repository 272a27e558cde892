"""Failure rules: the real reasons a Salesforce org rejects a record or a request.

Tests and the local run set them through the emulator's admin endpoint. A
*record rule* makes matching records fail with the status code the real cause
produces; a *fault* makes matching requests fail as a whole, or slowly.

Record rule (JSON)::

    {"cause": "validation_rule", "object": "Contact",
     "when": {"field": "Email", "op": "endswith", "value": "@blocked.example"},
     "message": "Email domain is blocked", "fields": ["Email"], "name": "Block_Domain"}

Fault (JSON)::

    {"fault": "http_503", "path": "composite/sobjects", "skip": 3, "times": 1}
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from devstack.emulator.schema import RecordError

# cause -> (statusCode, default message). Messages follow what orgs print.
RECORD_CAUSES: dict[str, tuple[str, str]] = {
    "validation_rule": ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "The record does not meet a validation rule."),
    "no_access": ("INSUFFICIENT_ACCESS_OR_READONLY", "insufficient access rights on object id"),
    "no_cross_reference_access": (
        "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY",
        "insufficient access rights on cross-reference id",
    ),
    "flow_failure": (
        "CANNOT_EXECUTE_FLOW_TRIGGER",
        'We can\'t save this record because the "Record Update" process failed. '
        "Give your Salesforce admin these details. An unhandled fault has occurred in this flow.",
    ),
    "row_lock": ("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record or 1 records"),
    # The codes below are Salesforce StatusCode values (SOAP API Developer Guide, "Core Data Types Used in API
    # Calls": StatusCode; "DuplicateError" for duplicate rules); the messages are the ones orgs print.
    # A row lock met by a trigger or flow reaches the API wrapped in the automation's code, with
    # UNABLE_TO_LOCK_ROW only in the message.
    "trigger_row_lock": (
        "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
        "ContactTrigger: execution of AfterUpdate caused by: System.DmlException: Update failed. First exception "
        "on row 0 with id 001000000000001AAA; first error: UNABLE_TO_LOCK_ROW, unable to obtain exclusive access "
        "to this record or 1 records: 001000000000001AAA: []",
    ),
    "trigger_failure": (
        "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
        "ContactTrigger: execution of BeforeUpdate caused by: System.NullPointerException: Attempt to "
        "de-reference a null object: Trigger.ContactTrigger: line 7, column 1",
    ),
    "restricted_picklist": (
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        "bad value for restricted picklist field: {value}",
    ),
    "duplicate_rule": ("DUPLICATES_DETECTED", "Use one of these records?"),
    "approval_lock": ("ENTITY_IS_LOCKED", "the entity is locked for editing"),
    "inactive_owner": (
        "INACTIVE_OWNER_OR_USER",
        "operation performed with inactive user [005000000000001AAA] as owner",
    ),
    "field_integrity": ("FIELD_INTEGRITY_EXCEPTION", "field integrity exception: unknown (id value of incorrect type)"),
    # A delete refused because other records depend on the record (a Case, an activated Contract, a master-detail
    # child); Salesforce names them in the message. Only for rules with "on": "delete".
    "delete_blocked": (
        "DELETE_FAILED",
        "Your attempt to delete this record could not be completed because it is associated with other records.",
    ),
}

# What a record rule applies to: saving (insert, update, upsert) or deleting the record.
RULE_OPERATIONS = ("save", "delete")
# What can refuse a delete (validation, duplicate and picklist rules run on save only).
DELETE_CAUSES = frozenset(
    {"delete_blocked", "no_access", "approval_lock", "row_lock", "trigger_failure", "flow_failure"}
)

# Order in which an org evaluates the causes for one record: sharing and
# access first, then locks, then validation rules, then automation.
_CAUSE_ORDER = [
    "no_access",
    "no_cross_reference_access",
    "inactive_owner",
    "approval_lock",
    "delete_blocked",
    "row_lock",
    "field_integrity",
    "restricted_picklist",
    "validation_rule",
    "duplicate_rule",
    "trigger_failure",
    "trigger_row_lock",
    "flow_failure",
]

FAULTS: dict[str, tuple[int, str, str]] = {
    "http_500": (
        500,
        "UNKNOWN_EXCEPTION",
        "An unexpected error occurred. Please include this ErrorId if you contact support: 1234567-89 (-1)",
    ),
    "http_503": (503, "SERVER_UNAVAILABLE", "Service Unavailable: the server is temporarily unable to serve requests"),
    "request_limit": (403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
    # The org has no API access (edition or setting), or the integration user lacks "API Enabled".
    "api_disabled_org": (403, "API_DISABLED_FOR_ORG", "API is not enabled for this Organization or Partner"),
    "api_disabled_user": (403, "API_CURRENTLY_DISABLED", "API is disabled for this User"),
    "invalid_session": (401, "INVALID_SESSION_ID", "Session expired or invalid"),
    # Every session ends (timeout, or an admin revoked them), then the request gets 401.
    "session_expiry": (401, "INVALID_SESSION_ID", "Session expired or invalid"),
    # No status: these delay the request instead of failing it.
    "latency": (0, "", ""),
    "hang": (0, "", ""),
}

_OPS = {"eq", "ne", "in", "contains", "startswith", "endswith", "regex", "is_null", "not_null", "any"}
_ids = itertools.count(1)


class RuleError(ValueError):
    """A rule the emulator cannot apply; the admin endpoint answers 400."""


@dataclass(frozen=True)
class Condition:
    field: str | None
    op: str
    value: Any = None

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> Condition:
        if raw is None:
            return cls(None, "any")
        op = raw.get("op", "eq")
        if op not in _OPS:
            raise RuleError(f"Unknown condition op {op!r}; use one of {sorted(_OPS)}")
        if op != "any" and not raw.get("field"):
            raise RuleError("A condition needs a 'field'")
        if op == "regex":
            re.compile(raw["value"])
        return cls(raw.get("field"), op, raw.get("value"))

    def matches(self, values: dict[str, Any]) -> bool:
        if self.op == "any":
            return True
        actual = values.get(self.field) if self.field else None
        if self.op == "is_null":
            return actual is None
        if self.op == "not_null":
            return actual is not None
        if self.op == "eq":
            return actual == self.value
        if self.op == "ne":
            return actual != self.value
        if self.op == "in":
            return actual in self.value
        if actual is None:
            return False
        text = str(actual)
        if self.op == "contains":
            return str(self.value) in text
        if self.op == "startswith":
            return text.startswith(str(self.value))
        if self.op == "endswith":
            return text.endswith(str(self.value))
        return re.search(self.value, text) is not None

    def as_json(self) -> dict[str, Any]:
        return {"field": self.field, "op": self.op, "value": self.value}


@dataclass
class RecordRule:
    id: int
    cause: str
    object: str | None
    when: Condition
    message: str
    fields: tuple[str, ...]
    times: int | None  # fail only the first N attempts per record (row locks)
    name: str | None
    on: str = "save"  # RULE_OPERATIONS: a delete rule checks the stored record being deleted
    attempts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> RecordRule:
        cause = raw.get("cause")
        if cause not in RECORD_CAUSES:
            raise RuleError(f"Unknown cause {cause!r}; use one of {sorted(RECORD_CAUSES)}")
        _status_code, default_message = RECORD_CAUSES[cause]
        message = raw.get("message") or default_message
        if cause == "validation_rule" and raw.get("name") and not raw.get("message"):
            message = f"{raw['name']}: {default_message}"
        times = raw.get("times")
        if times is not None and (not isinstance(times, int) or times < 1):
            raise RuleError("'times' must be a positive whole number")
        on = raw.get("on", "save")
        if on not in RULE_OPERATIONS:
            raise RuleError(f"'on' must be one of {list(RULE_OPERATIONS)}")
        if cause == "delete_blocked" and on != "delete":
            raise RuleError('cause \'delete_blocked\' applies to deletes only: add "on": "delete"')
        if on == "delete" and cause not in DELETE_CAUSES:
            raise RuleError(f"a delete is refused only for {sorted(DELETE_CAUSES)}, not {cause!r}")
        return cls(
            id=next(_ids),
            on=on,
            cause=cause,
            object=raw.get("object"),
            when=Condition.parse(raw.get("when")),
            message=message,
            fields=tuple(raw.get("fields", ())),
            times=times,
            name=raw.get("name"),
        )

    @property
    def status_code(self) -> str:
        return RECORD_CAUSES[self.cause][0]

    def check(
        self, sobject: str, record_key: str, values: dict[str, Any], record_id: str | None, operation: str = "save"
    ) -> RecordError | None:
        if self.on != operation or (self.object and self.object != sobject):
            return None
        if not self.when.matches(values):
            return None
        if self.times is not None:
            seen = self.attempts.get(record_key, 0)
            self.attempts[record_key] = seen + 1
            if seen >= self.times:
                return None
        message = self.message
        if self.cause in ("no_access", "row_lock") and record_id:
            message = f"{message}: {record_id}"
        if "{value}" in message:
            message = message.replace("{value}", str(values.get(self.fields[0]) if self.fields else ""))
        return RecordError(self.status_code, message, self.fields)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": "record",
            "cause": self.cause,
            "statusCode": self.status_code,
            "object": self.object,
            "when": self.when.as_json(),
            "message": self.message,
            "fields": list(self.fields),
            "times": self.times,
            "name": self.name,
            "on": self.on,
        }


@dataclass
class Fault:
    id: int
    fault: str
    path: str | None
    method: str | None
    skip: int
    times: int | None
    seconds: float
    seen: int = 0
    fired: int = 0

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Fault:
        kind = raw.get("fault")
        if kind not in FAULTS:
            raise RuleError(f"Unknown fault {kind!r}; use one of {sorted(FAULTS)}")
        skip = raw.get("skip", 0)
        times = raw.get("times")
        if not isinstance(skip, int) or skip < 0:
            raise RuleError("'skip' must be a whole number >= 0")
        if times is not None and (not isinstance(times, int) or times < 1):
            raise RuleError("'times' must be a positive whole number")
        default_seconds = 3600.0 if kind == "hang" else 0.0
        return cls(
            id=next(_ids),
            fault=kind,
            path=raw.get("path"),
            method=(raw.get("method") or "").upper() or None,
            skip=skip,
            times=times,
            seconds=float(raw.get("seconds", default_seconds)),
        )

    def applies(self, method: str, path: str) -> bool:
        """Whether this fault fires for the request; counts it either way."""
        if self.path and self.path not in path:
            return False
        if self.method and self.method != method:
            return False
        self.seen += 1
        if self.seen <= self.skip:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True

    @property
    def response(self) -> tuple[int, list[dict[str, str]]]:
        status, code, message = FAULTS[self.fault]
        return status, [{"message": message, "errorCode": code}]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": "fault",
            "fault": self.fault,
            "path": self.path,
            "method": self.method,
            "skip": self.skip,
            "times": self.times,
            "seconds": self.seconds,
            "fired": self.fired,
        }


def parse_rule(raw: dict[str, Any]) -> RecordRule | Fault:
    if not isinstance(raw, dict):
        raise RuleError("A rule is a JSON object with 'cause' (record rule) or 'fault' (request fault)")
    if "fault" in raw:
        return Fault.parse(raw)
    if "cause" in raw:
        return RecordRule.parse(raw)
    raise RuleError("A rule needs 'cause' (record rule) or 'fault' (request fault)")


def first_record_error(
    rules: list[RecordRule],
    sobject: str,
    record_key: str,
    values: dict[str, Any],
    record_id: str | None,
    operation: str = "save",
) -> RecordError | None:
    """The error the org reports for saving (or deleting) this record, if any rule rejects it."""
    ordered = sorted(rules, key=lambda r: (_CAUSE_ORDER.index(r.cause), r.id))
    for rule in ordered:
        error = rule.check(sobject, record_key, values, record_id, operation)
        if error is not None:
            return error
    return None
