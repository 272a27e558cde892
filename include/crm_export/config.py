"""Export streams from the configuration file (``streams.yml``), validated. Pure: no Airflow, no driver.

A stream is one source table or view, one Salesforce object, one external-id
field and a field mapping. The file is validated by pydantic models; every
problem is reported with the stream and the setting it is in, so a broken
config fails DAG parsing instead of half an export.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from include.crm_export.errors import StreamConfigError
from include.crm_export.names import (
    DEFAULT_IN_FLIGHT,
    EXPORT_TASK_PREFIX,
    MAX_BATCH_SIZE,
    MAX_IN_FLIGHT,
    REEXPORT_TASK_PREFIX,
    SALESFORCE_CONN_ID,
    STREAMS_FILE_ENV,
)

DEFAULT_CONFIG_PATH = Path(__file__).parent / "streams.yml"

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_SF_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_STREAM_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _problem(detail: str) -> PydanticCustomError:
    """A validation error whose message is exactly ``detail`` (pydantic would prefix "Value error, ")."""
    return PydanticCustomError("crm_export", "{detail}", {"detail": detail})


def _sql_identifier(value: str) -> str:
    if not _IDENTIFIER.match(value):
        raise _problem(f"{value!r} is not a plain SQL identifier (letters, digits, _)")
    return value


def _salesforce_name(value: str) -> str:
    if not _SF_NAME.match(value):
        raise _problem(f"{value!r} is not a Salesforce API name")
    return value


def _whole_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _problem(f"{value!r} is not a whole number")
    return value


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _problem(f"{value!r} is not a number")
    return value


SqlIdentifier = Annotated[str, AfterValidator(_sql_identifier)]
SalesforceName = Annotated[str, AfterValidator(_salesforce_name)]
WholeNumber = Annotated[int, BeforeValidator(_whole_number)]
Number = Annotated[float, BeforeValidator(_number)]


# A Bulk API 2.0 job reads at most this many times bulk_job_records records (the unchanged among them are not
# sent): a job keeps a few dozen bytes per record read, so this bounds its memory.
BULK_JOB_READ_FACTOR = 4


class RunLimits(BaseModel):
    """The settings a stream may take from ``defaults``, each declared once: name, type, default, bound, help.

    The stream file is validated against these, :class:`Stream` carries them,
    and the README's settings table is checked against :func:`settings_table`.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    batch_size: Annotated[
        WholeNumber, Field(ge=1, le=MAX_BATCH_SIZE, description="Records per sObject Collections request.")
    ] = MAX_BATCH_SIZE
    max_records_per_run: Annotated[
        WholeNumber, Field(ge=1, description="A run reads no more than this many records; the next run goes on.")
    ] = 100_000
    max_minutes_per_run: Annotated[
        Number, Field(ge=0.01, description="A run reads nothing more after this long; what is in flight finishes.")
    ] = 12.0
    settle_seconds: Annotated[
        Number, Field(ge=0, description="Rows changed more recently than this wait for the next run (late rows).")
    ] = 30.0
    request_limit_wait_minutes: Annotated[
        Number,
        Field(
            ge=0.01,
            description="On REQUEST_LIMIT_EXCEEDED the task is rescheduled this much later (no retry used up).",
        ),
    ] = 30.0
    daily_api_requests: Annotated[
        WholeNumber,
        Field(ge=1, description="crm-export's own Salesforce API requests in a rolling 24 hours, every stream."),
    ] = 100_000
    api_reserve_percent: Annotated[
        Number,
        Field(ge=0, le=100, description="The share of the org's daily allowance left to its other integrations."),
    ] = 10.0
    alert_rejected_percent: Annotated[
        Number,
        Field(ge=0, le=100, description="With pause on error off: notify above this share of records rejected."),
    ] = 5.0
    alert_retained_wal_mb: Annotated[
        Number,
        Field(
            ge=0.001,
            description="Notify (and flag on the page) when the server keeps more WAL than this for a capture "
            "stream's replication slot; a slot no stream follows takes the smallest value of any stream.",
        ),
    ] = 1000.0
    run_history_days: Annotated[
        WholeNumber, Field(ge=1, description="How long a stream's runs are kept for the page's history.")
    ] = 90
    in_flight: Annotated[
        WholeNumber,
        Field(
            ge=1,
            le=MAX_IN_FLIGHT,
            description="sObject Collections requests in flight at once, at most (1: one at a time).",
        ),
    ] = DEFAULT_IN_FLIGHT
    slow_request_seconds: Annotated[
        Number, Field(ge=0.1, description="A request slower than this makes the export send fewer at once.")
    ] = 10.0
    bulk_threshold: Annotated[
        WholeNumber,
        Field(ge=0, description="A backlog of at least this many rows goes through Bulk API 2.0 (0: only if asked)."),
    ] = 50_000
    bulk_job_records: Annotated[
        WholeNumber,
        Field(
            ge=1,
            le=150_000,
            description="Records to send per Bulk API 2.0 job (unchanged records read between them are not "
            f"counted; a job reads at most {BULK_JOB_READ_FACTOR} times this many).",
        ),
    ] = 50_000
    bulk_job_megabytes: Annotated[
        WholeNumber,
        Field(ge=1, le=100, description="A Bulk API 2.0 job takes no row past this many megabytes of CSV."),
    ] = 100
    connection: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9_.\-]{1,250}$",
            description="The Airflow connection (type Salesforce) of the org the stream writes to.",
        ),
    ] = SALESFORCE_CONN_ID
    assignment_rules: Annotated[
        bool,
        Field(
            description="Whether Salesforce's Lead and Case assignment rules run on the records written. false: "
            "owners set by the source stick (REST: `Sforce-Auto-Assign: FALSE`; Bulk API 2.0: no "
            "`assignmentRuleId`). true: the object's active rule runs on both paths."
        ),
    ] = True
    skip_unchanged: Annotated[
        bool,
        Field(
            description='Records whose payload Salesforce confirmed last are not sent (fingerprints; see "Only what '
            'changed is sent"). false: every record read is sent, and the stream keeps no fingerprints.'
        ),
    ] = True


def settings_table() -> str:
    """The README's table of stream settings, made from :class:`RunLimits` (a unit test keeps them equal)."""
    rows = ["| setting | default | bounds | what it does |", "| --- | --- | --- | --- |"]
    for name, info in RunLimits.model_fields.items():
        bounds = []
        for rule in info.metadata:
            for attr, sign in (("ge", ">="), ("le", "<=")):
                if getattr(rule, attr, None) is not None:
                    bounds.append(f"{sign} {getattr(rule, attr):,}")
        if isinstance(info.default, bool):
            default = str(info.default).lower()
        elif isinstance(info.default, int | float):
            default = f"{info.default:,}"
        else:
            default = str(info.default)
        rows.append(f"| `{name}` | {default} | {', '.join(bounds)} | {info.description} |")
    return "\n".join(rows)


class ExternalIdSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    field: SalesforceName
    column: SqlIdentifier


class FieldSettings(BaseModel):
    """A mapped field written out: its source column, and what a null source value does (``on_null``).

    A lookup field (``AccountId``, ``WhoId`` …) names its parent as well: ``parent``, another stream (its
    object and external id field), or ``object`` and ``external_id`` for a parent exported elsewhere. The
    column then holds the parent's external id, and the record is linked by it ("Relationship Fields in
    Records", Bulk API 2.0 and Bulk API Developer Guide), never by a Salesforce Id.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    column: SqlIdentifier
    # clear: a null clears the field in Salesforce; keep: a null sends nothing, so Salesforce keeps its value.
    on_null: Literal["clear", "keep"] = "clear"
    parent: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")] | None = None
    object: SalesforceName | None = None
    external_id: SalesforceName | None = None


def _field_shorthand(value: Any) -> Any:
    if isinstance(value, str):
        return {"column": value}
    if not isinstance(value, dict):
        raise _problem(
            f"{value!r} must be a source column, or {{column: <column>, on_null: keep}}, or a lookup "
            "{parent: <stream>, column: <column>} / {object: <object>, external_id: <field>, column: <column>}"
        )
    return value


@dataclass(frozen=True)
class Lookup:
    """A lookup field of a stream: which parent it points at, by which external id, from which column.

    ``parent``: the stream that exports the parent records (None: they are exported elsewhere). Its task
    runs first, and a child whose parent it has not exported yet waits for it (:mod:`parents`).
    """

    field: str  # the lookup field, as in Setup: AccountId, WhoId, Primary_Contact__c
    column: str  # the source column holding the parent's external id
    object: str  # the parent's object
    external_id_field: str  # the parent's external id field
    parent_stream: str | None = None  # the stream exporting the parents, if one of ours
    parent: Stream | None = dataclass_field(
        default=None, repr=False
    )  # that stream, once the file is read (parse_config)


# ``Phone: phone`` is short for ``Phone: {column: phone}``.
FieldMapping = Annotated[FieldSettings, BeforeValidator(_field_shorthand)]


class DeletesSettings(BaseModel):
    """Which source rows are deleted in Salesforce: those whose ``column`` marks them deleted (not null, or true
    for a boolean column; :func:`include.crm_export.mapping.marked_deleted`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    column: SqlIdentifier


class ChangeStampSettings(BaseModel):
    """How the change column (the first ``order_by`` column) gets its values; see README, "Late rows"."""

    model_config = ConfigDict(extra="forbid", strict=True)

    set_by: Literal["database", "application"] = "database"
    writer_time_zones: list[Annotated[str, Field(min_length=1)]] = []
    lead_seconds: Annotated[Number, Field(ge=0)] | None = None


class StreamSettings(RunLimits):
    """One stream as written in the file."""

    source: str
    key: SqlIdentifier
    order_by: list[SqlIdentifier] | None = None  # required unless capture: logical
    sobject: SalesforceName
    external_id: ExternalIdSettings
    fields: dict[SalesforceName, FieldMapping]
    mode: Literal["upsert", "update", "insert"] = "upsert"
    deletes: DeletesSettings | None = None
    # timestamp: follow the change column (order_by); logical: follow the table's commit order through logical
    # decoding (capture.py), deletes included, no order_by.
    capture: Literal["timestamp", "logical"] = "timestamp"
    change_stamp: ChangeStampSettings = ChangeStampSettings()
    lock_stale_after_minutes: Annotated[Number, Field(ge=0.01)] | None = None


LOGICAL = "logical"
# How long before its transaction starts an application may stamp a row (the
# time between computing "now" and BEGIN, plus clock skew), unless the stream says.
DEFAULT_APPLICATION_LEAD_SECONDS = 300.0
ANY_TIME_ZONE = "any"
# A run stops reading after max_minutes_per_run and finishes its batch in flight
# (Airflow times the task out 5 minutes later); a lock held longer than this
# beyond max_minutes_per_run belongs to a session whose worker is gone.
LOCK_GRACE_MINUTES = 10.0


@dataclass(frozen=True)
class ChangeStamp:
    set_by: str = "database"
    writer_time_zones: tuple[str, ...] = ()
    lead_seconds: float = 0.0


@dataclass(frozen=True)
class ChangeColumn:
    """What the change column's type means for the horizon (see ``change_column``)."""

    kind: str  # "timestamptz", "timestamp" (without time zone) or "date"
    writer_time_zones: tuple[str, ...]  # for "timestamp" and "date": the zones writers stamp in
    margin_seconds: float  # how far below its transaction's start a row's value may lie


_TIMESTAMP_TYPE = re.compile(r"^timestamp(?:\((\d)\))? with(out)? time zone$")


def change_column(stream: Stream, column_type: str) -> ChangeColumn:
    """The change column's kind from its PostgreSQL type (``format_type``); refuses what cannot be made safe."""
    column = stream.order_by[0]
    match = _TIMESTAMP_TYPE.match(column_type)
    if column_type == "date":
        kind, precision = "date", 0
    elif match:
        kind = "timestamp" if match.group(2) else "timestamptz"
        precision = int(match.group(1)) if match.group(1) is not None else 6
    else:
        raise _fail(
            stream.name,
            "order_by",
            f"the first column '{column}' must be the change timestamp (timestamptz, timestamp or date), "
            f"not {column_type}.",
        )
    stamp = stream.change_stamp
    if kind != "timestamptz" and not stamp.writer_time_zones:
        raise _fail(
            stream.name,
            "change_stamp.writer_time_zones",
            f"the change column '{column}' is {column_type}: its values say nothing about when a row changed "
            "unless the time zone its writers stamp in is known. Use timestamptz, or name the zone(s) writers' "
            "sessions use, for example writer_time_zones: [UTC] (or [any] if they differ: rows then wait up to "
            "26 hours before they are exported).",
        )
    # A value rounded to the column's precision may lie up to one unit below the instant it was taken.
    margin = 10.0**-precision if kind != "date" else 0.0
    return ChangeColumn(kind, stamp.writer_time_zones, margin + stamp.lead_seconds)


class Stream(RunLimits):
    """One stream, validated: what it reads, where it writes, and its settings (:class:`RunLimits`)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, arbitrary_types_allowed=True)

    name: str
    source_schema: str
    source_table: str
    key: str
    order_by: tuple[str, ...]
    sobject: str
    external_id_field: str
    external_id_column: str
    fields: tuple[tuple[str, str], ...]  # (Salesforce field, source column), in file order
    keep_when_null: frozenset[str] = frozenset()  # fields with on_null: keep
    lookups: tuple[Lookup, ...] = ()  # fields set by a parent's external id, in file order
    mode: str = "upsert"  # upsert, update (never creates) or insert (creates only)
    # The column that marks a row deleted (its record is then deleted in Salesforce, in every mode); None: rows
    # are never deleted in Salesforce.
    deletes_column: str | None = None
    capture: str = "timestamp"  # timestamp (order_by) or logical (a replication slot; order_by is the key alone)
    change_stamp: ChangeStamp = Field(default_factory=lambda: ChangeStamp())
    lock_stale_after_minutes: float = 22.0  # longer than any run takes: see lock_stream

    @property
    def source(self) -> str:
        return f"{self.source_schema}.{self.source_table}"

    @property
    def logical(self) -> bool:
        """Follows its table through logical decoding (``capture: logical``), not a change column."""
        return self.capture == LOGICAL

    @property
    def source_columns(self) -> tuple[str, ...]:
        """Every column the export reads, each once, in a stable order."""
        wanted = [*self.order_by, self.key, self.external_id_column, *(column for _, column in self.fields)]
        if self.deletes_column is not None:
            wanted.append(self.deletes_column)
        return tuple(dict.fromkeys(wanted))

    @property
    def task_id(self) -> str:
        return f"{EXPORT_TASK_PREFIX}{self.name}"

    @property
    def parent_streams(self) -> tuple[str, ...]:
        """The streams this one's lookups point at, each once (their tasks run before this one's)."""
        return tuple(dict.fromkeys(lookup.parent_stream for lookup in self.lookups if lookup.parent_stream))

    def lookups_by_field(self) -> dict[str, Lookup]:
        """Each lookup by its field, lower-cased (Salesforce field names ignore case); to ask for many fields."""
        return {lookup.field.lower(): lookup for lookup in self.lookups}

    def lookup(self, field: str) -> Lookup | None:
        return self.lookups_by_field().get(field.lower())

    @property
    def reexport_task_id(self) -> str:
        return f"{REEXPORT_TASK_PREFIX}{self.name}"


# Key types whose text forms are unique, case included: a primary key of one of these is one row per
# external id by itself, whatever Salesforce's case rules (uuid::text is always lower case).
_UNIQUE_TEXT_KEY_TYPES = ("smallint", "integer", "bigint", "uuid", "numeric")


def external_ids_unique_by_key(stream: Stream, column_types: dict[str, str]) -> bool:
    """Is the external id the key column itself, of a type no two rows can share a text form of? Then no two
    source rows can be one Salesforce record, and nothing needs checking."""
    return stream.external_id_column == stream.key and column_types[stream.key].startswith(_UNIQUE_TEXT_KEY_TYPES)


def _fail(stream: str, field: str, problem: str) -> StreamConfigError:
    return StreamConfigError(f"Stream config error in stream '{stream}', field '{field}': {problem}")


_KNOWN_SETTINGS = sorted(StreamSettings.model_fields)
_SHAPES = {
    "external_id": "must be {field: <Salesforce external id field>, column: <source column>}",
    "fields": "must map Salesforce field names to source columns (or to {column: <column>, on_null: keep})",
    "order_by": "must be a list of columns, for example [updated_at, id]",
    "deletes": "must be {column: <the column that marks a row deleted>}, for example {column: deleted_at}",
}


def _explain(stream: str, error: ErrorDetails) -> StreamConfigError:
    """One pydantic error as a person reads it: which stream, which setting, what is wrong."""
    loc = [str(part) for part in error["loc"] if not isinstance(part, int) and part != "[key]"]
    if len(loc) == 3 and loc[0] == "fields" and loc[2] == "column":
        loc = loc[:2]  # the mapped field's column, written either way (``Phone: phone`` or ``{column: phone}``)
    kind, value = error["type"], error.get("input")
    top = loc[0] if loc else "(stream)"
    if top in _SHAPES and (kind in ("missing", "extra_forbidden") or len(loc) == 1) and kind != "crm_export":
        return _fail(stream, top, "missing" if kind == "missing" and len(loc) == 1 else _SHAPES[top])
    if kind == "extra_forbidden":
        return _fail(stream, ".".join(loc), f"unknown setting; known settings are {_KNOWN_SETTINGS}")
    if kind == "missing":
        return _fail(stream, ".".join(loc), "missing")
    if kind in ("greater_than_equal", "less_than_equal"):
        limits = StreamSettings.model_fields[top].metadata
        low = next((m.ge for m in limits if getattr(m, "ge", None) is not None), None)
        high = next((m.le for m in limits if getattr(m, "le", None) is not None), None)
        upper = f" and at most {high}" if high is not None else ""
        return _fail(stream, top, f"{value} must be at least {low}{upper}")
    if kind == "crm_export" and top == "sobject" and "Salesforce" in error["msg"]:
        return _fail(stream, top, f"{value!r} is not a Salesforce object API name")
    if kind == "crm_export" and top == "fields" and "Salesforce" in error["msg"]:
        return _fail(stream, ".".join(loc), "is not a Salesforce field API name")
    if kind == "crm_export" and loc == ["external_id", "field"]:
        return _fail(stream, "external_id.field", f"{value!r} is not a Salesforce field API name")
    if kind == "string_type":
        return _fail(stream, ".".join(loc), f"{value!r} must be text")
    return _fail(stream, ".".join(loc) or "(stream)", error["msg"])


def parse_stream(name: Any, raw: Any, defaults: dict[str, Any]) -> Stream:
    if not isinstance(name, str) or not _STREAM_NAME.match(name):
        raise _fail(str(name), "name", "stream names are lower_snake_case (they become task ids)")
    if not isinstance(raw, dict):
        raise _fail(name, "(stream)", "a stream is a mapping of settings")
    try:
        settings = StreamSettings.model_validate({**defaults, **raw})
    except ValidationError as exc:
        raise _explain(name, exc.errors()[0]) from None

    schema, table = _source(name, settings.source)
    order_by = _order_by(name, settings)
    _check_fields(name, settings)
    return Stream(
        name=name,
        source_schema=schema,
        source_table=table,
        key=settings.key,
        order_by=order_by,
        sobject=settings.sobject,
        external_id_field=settings.external_id.field,
        external_id_column=settings.external_id.column,
        fields=tuple((sf_field, field.column) for sf_field, field in settings.fields.items()),
        keep_when_null=frozenset(sf_field for sf_field, field in settings.fields.items() if field.on_null == "keep"),
        lookups=_lookups(name, settings),
        mode=settings.mode,
        deletes_column=settings.deletes.column if settings.deletes is not None else None,
        capture=settings.capture,
        change_stamp=_change_stamp(name, settings.change_stamp),
        lock_stale_after_minutes=float(
            settings.lock_stale_after_minutes
            if settings.lock_stale_after_minutes is not None
            else settings.max_minutes_per_run + LOCK_GRACE_MINUTES
        ),
        **settings.model_dump(include=set(RunLimits.model_fields)),
    )


def _source(name: str, source: str) -> tuple[str, str]:
    if source.count(".") != 1:
        raise _fail(name, "source", f"{source!r} must be schema.table_or_view")
    schema, table = source.split(".")
    for part in (schema, table):
        if not _IDENTIFIER.match(part):
            raise _fail(name, "source", f"{part!r} is not a plain SQL identifier (letters, digits, _)")
    return schema, table


def _order_by(name: str, settings: StreamSettings) -> tuple[str, ...]:
    if settings.capture == LOGICAL:
        if settings.order_by is not None:
            raise _fail(
                name,
                "order_by",
                "a capture: logical stream follows the database's commit order, not a column: remove order_by",
            )
        return (settings.key,)
    if settings.order_by is None:
        raise _fail(name, "order_by", "missing")
    order_by = tuple(settings.order_by)
    if not order_by:
        raise _fail(name, "order_by", _SHAPES["order_by"])
    if len(set(order_by)) != len(order_by):
        raise _fail(name, "order_by", "lists a column twice")
    if order_by[-1] != settings.key:
        total = f"must end with the key column '{settings.key}' so the order is total (ties broken by key)"
        raise _fail(name, "order_by", total)
    if len(order_by) < 2:
        raise _fail(name, "order_by", "needs a change timestamp column first, for example [updated_at, id]")
    return order_by


def _check_fields(name: str, settings: StreamSettings) -> None:
    if not settings.fields:
        raise _fail(name, "fields", _SHAPES["fields"])
    seen_lower = {settings.external_id.field.lower()}
    for sf_field in settings.fields:
        if sf_field.lower() in seen_lower:
            twice = "is mapped twice (or is the external id field, which is set from external_id)"
            raise _fail(name, f"fields.{sf_field}", twice)
        seen_lower.add(sf_field.lower())


def _lookups(name: str, settings: StreamSettings) -> tuple[Lookup, ...]:
    """The stream's lookup fields; a ``parent`` stream's object and external id are filled in by
    :func:`parse_config`, once every stream is read."""
    lookups = []
    for sf_field, mapped in settings.fields.items():
        where = f"fields.{sf_field}"
        if mapped.parent is not None:
            if mapped.object is not None or mapped.external_id is not None:
                both = "names its parent twice: use parent (a stream) or object and external_id, not both"
                raise _fail(name, where, both)
            lookups.append(Lookup(sf_field, mapped.column, "", "", parent_stream=mapped.parent))
        elif mapped.object is not None or mapped.external_id is not None:
            if mapped.object is None or mapped.external_id is None:
                half = "a parent exported elsewhere needs both object and external_id (its external id field)"
                raise _fail(name, where, half)
            lookups.append(Lookup(sf_field, mapped.column, mapped.object, mapped.external_id, None))
    return tuple(lookups)


def parents_first(streams: dict[str, Stream]) -> list[str]:
    """The streams in an order where each parent comes before its children (file order otherwise)."""
    return _order({name: stream.parent_streams for name, stream in streams.items()})


def _order(parents: dict[str, tuple[str, ...]]) -> list[str]:
    """Stream names, parents first, ties in the given order; a cycle raises naming its streams."""
    done: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = [*visiting[visiting.index(name) :], name]
            raise _fail(
                name,
                "fields",
                "its lookups go round in a circle ("
                + " -> ".join(cycle)
                + "): each stream's parents are exported before it, so one of these lookups has to go (set it "
                "from another stream, or load that link separately)",
            )
        visiting.append(name)
        for parent in parents[name]:
            visit(parent)
        visiting.pop()
        done.append(name)

    for name in parents:
        visit(name)
    return done


def _link_parents(streams: dict[str, Stream]) -> dict[str, Stream]:
    """Each lookup naming a ``parent`` stream gets that stream (its object and external id); the streams come
    back parents first. An unknown parent or a cycle is refused, naming the streams."""
    for stream in streams.values():
        for lookup in stream.lookups:
            if lookup.parent_stream is not None and lookup.parent_stream not in streams:
                raise _fail(
                    stream.name,
                    f"fields.{lookup.field}.parent",
                    f"there is no stream '{lookup.parent_stream}'; streams are {sorted(streams)} (for a parent "
                    "exported elsewhere, write {object: <object>, external_id: <its external id field>, column: …})",
                )
            _check_parent(stream, lookup, streams)
    linked: dict[str, Stream] = {}
    for name in parents_first(streams):
        stream = streams[name]
        if not stream.parent_streams:
            linked[name] = stream
            continue
        lookups = tuple(
            lookup
            if lookup.parent_stream is None
            else replace(
                lookup,
                object=linked[lookup.parent_stream].sobject,
                external_id_field=linked[lookup.parent_stream].external_id_field,
                parent=linked[lookup.parent_stream],
            )
            for lookup in stream.lookups
        )
        linked[name] = stream.model_copy(update={"lookups": lookups})
    return linked


_OWN_STREAM = (
    "points at its own stream: a record whose parent is a record of the same stream (a hierarchy such as "
    "Account.ParentId) is not supported yet. Load that link separately, or leave the field out"
)


def _check_parent(stream: Stream, lookup: Lookup, streams: dict[str, Stream]) -> None:
    """A lookup must name a parent the export can wait for: a stream of the same org, never itself, and a parent
    that one of these streams exports is named as that stream (so it goes first and its errors are known)."""
    where = f"fields.{lookup.field}"
    if lookup.parent_stream == stream.name:
        raise _fail(stream.name, f"{where}.parent", _OWN_STREAM)
    if lookup.parent_stream is not None:
        parent = streams[lookup.parent_stream]
        if parent.connection != stream.connection:
            raise _fail(
                stream.name,
                f"{where}.parent",
                f"stream '{parent.name}' writes to connection '{parent.connection}', this stream to "
                f"'{stream.connection}': a lookup resolves in one org, so its parent must be exported to the same "
                "one (or name it with {object: …, external_id: …} if this org has it from elsewhere)",
            )
        return
    for other in streams.values():
        same_parent = (
            other.connection == stream.connection
            and other.sobject.lower() == lookup.object.lower()
            and other.external_id_field.lower() == lookup.external_id_field.lower()
        )
        if same_parent:
            refusal = (
                _OWN_STREAM
                if other.name == stream.name
                else f"{lookup.object} by {lookup.external_id_field} is what stream '{other.name}' exports: write "
                f"{{parent: {other.name}, column: {lookup.column}}}, so that stream goes first and a child waits "
                "for its parent instead of failing"
            )
            raise _fail(stream.name, where, refusal)


def _change_stamp(name: str, raw: ChangeStampSettings) -> ChangeStamp:
    if raw.lead_seconds is not None and raw.set_by != "application":
        raise _fail(name, "change_stamp.lead_seconds", "applies only with set_by: application")
    lead = raw.lead_seconds if raw.lead_seconds is not None else DEFAULT_APPLICATION_LEAD_SECONDS
    zones = tuple(dict.fromkeys(raw.writer_time_zones))
    if ANY_TIME_ZONE in zones and len(zones) > 1:
        raise _fail(name, "change_stamp.writer_time_zones", "'any' already covers every zone; list it alone")
    return ChangeStamp(raw.set_by, zones, float(lead) if raw.set_by == "application" else 0.0)


def parse_config(raw: Any, *, origin: str = "streams config") -> dict[str, Stream]:
    if not isinstance(raw, dict) or "streams" not in raw:
        raise StreamConfigError(f"{origin}: expected a mapping with a 'streams' section")
    unknown = set(raw) - {"defaults", "streams"}
    if unknown:
        raise StreamConfigError(f"{origin}: unknown section {sorted(unknown)[0]!r}; use 'defaults' and 'streams'")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise StreamConfigError(f"{origin}: 'defaults' must be a mapping of {sorted(RunLimits.model_fields)}")
    try:
        RunLimits.model_validate(defaults)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise StreamConfigError(
            f"{origin}: 'defaults' may set only {sorted(RunLimits.model_fields)}, each as for a stream; "
            f"{'.'.join(str(p) for p in error['loc'])}: {_explain('(defaults)', error).args[0].split(': ', 1)[1]}"
        ) from None
    streams_raw = raw["streams"]
    if not isinstance(streams_raw, dict) or not streams_raw:
        raise StreamConfigError(f"{origin}: 'streams' must map stream names to their settings")
    streams = _link_parents({name: parse_stream(name, settings, defaults) for name, settings in streams_raw.items()})
    targets: dict[tuple[str, str], str] = {}
    for stream in streams.values():
        target = (stream.sobject, stream.external_id_field)
        if target in targets:
            raise _fail(stream.name, "sobject", f"writes the same object and external id as stream '{targets[target]}'")
        targets[target] = stream.name
    return streams


def config_path() -> Path:
    return Path(os.environ.get(STREAMS_FILE_ENV) or DEFAULT_CONFIG_PATH)


def load_streams(path: Path | None = None) -> dict[str, Stream]:
    """Read and validate the streams file (a local file: fine at DAG parse time)."""
    path = path or config_path()
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise StreamConfigError(f"Cannot read the streams config {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise StreamConfigError(f"The streams config {path} is not valid YAML: {exc}") from exc
    return parse_config(raw, origin=str(path))


def stream_definition(stream: Stream, column_types: dict[str, str], *, org_id: str | None = None) -> dict[str, Any]:
    """What a stream's watermark is a position in: change any of it and the position means something else.

    ``org_id``: the Salesforce org the stream's connection reaches (when the
    caller has asked the org): a watermark from one org never goes on in
    another (a sandbox refresh, a connection pointed elsewhere).
    """
    definition = {
        "source": stream.source,
        "key": [stream.key, column_types[stream.key]],
        "order_by": [[column, column_types[column]] for column in stream.order_by],
        "sobject": stream.sobject,
        "external_id": [stream.external_id_field, stream.external_id_column],
        # The mapping: records exported under another one carry it in Salesforce.
        "fields": [_field_definition(stream, field, column) for field, column in sorted(stream.fields)],
    }
    if stream.logical:
        definition["capture"] = LOGICAL  # positions are in the table's commit order, not a column's
    if org_id is not None:
        definition["org"] = org_id
    return definition


def _field_definition(stream: Stream, field: str, column: str) -> list[str]:
    """A mapped field as the definition records it: ``[field, column]``, then ``keep`` (on_null: keep) and the
    parent a lookup points at (``Account.CRM_Account_Id__c``)."""
    written = [field, column]
    if field in stream.keep_when_null:
        written.append("keep")
    lookup = stream.lookup(field)
    if lookup is not None:
        written.append(f"{lookup.object}.{lookup.external_id_field}")
    return written


def definition_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Each part of the definition that differs, as a person reads it."""

    def text(value: Any, part: str) -> str:
        if part == "fields":
            return "{" + ", ".join(f"{field}: {' '.join(rest)}" for field, *rest in value) + "}"
        if isinstance(value, list) and value and isinstance(value[0], list):
            return ", ".join(f"{column} {kind}" for column, kind in value)
        if isinstance(value, list):
            return " ".join(str(part) for part in value)
        return str(value)

    def change(part: str) -> str:
        if part == "org":
            return (
                f"its connection now reaches Salesforce org {new[part]}, not org {old[part]} where the watermark "
                "was set (a sandbox refresh, or the connection pointed at another org)"
            )
        return f"{part} was {text(old[part], part)} and is now {text(new[part], part)}"

    # A part one side lacks was not recorded by the release that wrote it, or not asked this time (the org,
    # on a dry run): nothing to compare.
    return [change(part) for part in new if part in old and old[part] != new[part]]
