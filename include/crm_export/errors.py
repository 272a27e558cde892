"""The kinds of failure, as types. Code branches on the class, never on message text.

- :class:`RejectedRecord` (data): a rejected record. Salesforce (or the
  mapping) refused one record; permanent codes go to ``ExportErrors`` and obey
  the pause on error Variable.
- :class:`RequestFailed` (exception): a request failure. The request failed as
  a whole for a reason that is not a record's fault (network, 5xx, limits,
  session); nothing is recorded, the watermark does not move, Airflow retries.
- :class:`SettingsError`, :class:`StreamConfigError` (exceptions): a person
  has to fix a setting; retrying does not help.
"""

from __future__ import annotations

from dataclasses import dataclass

# Record-level codes that go away on their own; retried within the run first.
TRANSIENT_RECORD_CODES = frozenset(
    {
        "UNABLE_TO_LOCK_ROW",
        "REQUEST_RUNNING_TOO_LONG",
        "QUERY_TIMEOUT",
        "SERVER_UNAVAILABLE",
    }
)

_TRANSIENT_IN_MESSAGE = ("UNABLE_TO_LOCK_ROW",)

# Request-level 403s that retrying cannot fix: an admin has to change the org or the user.
API_ACCESS_CODES = {
    "API_DISABLED_FOR_ORG": "The org has no API access: an admin must enable it (Setup, or the org's edition).",
    "API_CURRENTLY_DISABLED": (
        'The integration user may not use the API: an admin must give it the "API Enabled" permission '
        "(its profile or a permission set)."
    ),
}

# Codes raised before a record reaches Salesforce (the source row cannot be sent).
MISSING_EXTERNAL_ID = "CRM_EXPORT_MISSING_EXTERNAL_ID"
INVALID_SOURCE_VALUE = "CRM_EXPORT_INVALID_SOURCE_VALUE"
DUPLICATE_EXTERNAL_ID = "CRM_EXPORT_DUPLICATE_EXTERNAL_ID"
NOT_IN_SALESFORCE = "CRM_EXPORT_NOT_IN_SALESFORCE"  # mode: update, and Salesforce has no such record
# A lookup's parent is not in Salesforce because its own stream holds it or has not reached it (parents.py).
PARENT_NOT_EXPORTED = "CRM_EXPORT_PARENT_NOT_EXPORTED"


def storable(text: str) -> str:
    """Text PostgreSQL can store: a NUL (which Salesforce may echo back from a value) becomes U+FFFD."""
    return text.replace("\x00", "\ufffd")


@dataclass(frozen=True)
class RejectedRecord:
    """Salesforce's (or our mapping's) reason for refusing one record."""

    code: str
    message: str
    fields: tuple[str, ...] = ()
    # Waits for something that comes by itself (a parent its stream has not reached yet, parents.py): the export
    # stops before it for this run, with no ExportErrors row and no hold; the next run starts at it.
    waits: bool = False

    def __post_init__(self) -> None:
        # Every rejection ends up in ExportErrors and in messages, whichever path or client met it.
        object.__setattr__(self, "code", storable(self.code))
        object.__setattr__(self, "message", storable(self.message))
        object.__setattr__(self, "fields", tuple(storable(field) for field in self.fields))

    @property
    def transient(self) -> bool:
        # A row lock met inside a trigger or flow comes back under the automation's code
        # (CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY …) with UNABLE_TO_LOCK_ROW only in the message.
        return self.code in TRANSIENT_RECORD_CODES or any(code in self.message for code in _TRANSIENT_IN_MESSAGE)

    def describe(self) -> str:
        fields = f" (fields: {', '.join(self.fields)})" if self.fields else ""
        return f"{self.code}: {self.message}{fields}"


class CrmExportError(Exception):
    """Base of the project's exceptions."""


class RequestFailed(CrmExportError):
    """A whole Salesforce request failed for a reason that is not the record's fault."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ServerBusy(RequestFailed):
    """A request Salesforce could not serve right now: HTTP 5xx, or too many long-running requests at once
    (403 REQUEST_LIMIT_EXCEEDED "ConcurrentPerOrgLongTxn"). Retried within the run, with fewer requests in
    flight, before it fails the task."""


class RequestRefused(RequestFailed):
    """Salesforce refuses the request itself, and retrying cannot help until a person changes something.

    For example every part of a request refused for the same reason (a mapped
    field the integration user cannot see). The task fails without Airflow's
    retries; the message says what to change.
    """


class RequestLimitExceeded(RequestFailed):
    """403 REQUEST_LIMIT_EXCEEDED: the org's rolling 24-hour API allowance is used up. Wait, do not retry."""


class NotFound(RequestFailed):
    """404: what the request names (an object, a field, a Bulk API 2.0 job) does not exist (any more)."""


class JobResultsUnreadable(RequestFailed):
    """A finished Bulk API 2.0 job's results cannot be read; reading them again will not help."""


class SessionExpired(RequestFailed):
    """401 INVALID_SESSION_ID that could not be renewed with the connection's auth flow."""


class DatabaseUnavailable(CrmExportError):
    """The project's PostgreSQL connection was lost or refused mid-run; retried by Airflow."""


class SettingsError(CrmExportError):
    """An Airflow Variable has a value we refuse to guess about."""


class StreamConfigError(CrmExportError):
    """The stream configuration is broken; names the stream and the field."""


class StreamBusy(CrmExportError):
    """Another process is exporting the same stream right now."""


class StreamStuck(CrmExportError):
    """The stream's lock has been held longer than any export takes: its holder is gone or hung."""
