"""Export streams from the configuration file (``streams.yml``), validated.

A stream is one source table or view, one Salesforce object, one external-id
field and a field mapping. Everything a person can get wrong in the file is
checked here, with an error that names the stream and the field, so a broken
config fails DAG parsing instead of half an export.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from include.crm_export.errors import StreamConfigError

DEFAULT_CONFIG_PATH = Path(__file__).parent / "streams.yml"
CONFIG_PATH_ENV = "CRM_EXPORT_STREAMS_FILE"
MAX_BATCH_SIZE = 200  # sObject Collections limit

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_SF_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_STREAM_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

_DEFAULTS = {
    "batch_size": MAX_BATCH_SIZE,
    "max_records_per_run": 100_000,
    "max_minutes_per_run": 12.0,
    "settle_seconds": 30.0,
}
_STREAM_KEYS = {"source", "key", "order_by", "sobject", "external_id", "fields", *_DEFAULTS}


@dataclass(frozen=True)
class Stream:
    name: str
    source_schema: str
    source_table: str
    key: str
    order_by: tuple[str, ...]
    sobject: str
    external_id_field: str
    external_id_column: str
    fields: tuple[tuple[str, str], ...]  # (Salesforce field, source column), in file order
    batch_size: int
    max_records_per_run: int
    max_minutes_per_run: float
    settle_seconds: float

    @property
    def source(self) -> str:
        return f"{self.source_schema}.{self.source_table}"

    @property
    def source_columns(self) -> tuple[str, ...]:
        """Every column the export reads, each once, in a stable order."""
        wanted = [*self.order_by, self.key, self.external_id_column, *(column for _, column in self.fields)]
        return tuple(dict.fromkeys(wanted))

    @property
    def task_id(self) -> str:
        return f"export_{self.name}"


def _fail(stream: str, field: str, problem: str) -> StreamConfigError:
    return StreamConfigError(f"Stream config error in stream '{stream}', field '{field}': {problem}")


def _identifier(stream: str, field: str, value: Any) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise _fail(stream, field, f"{value!r} is not a plain SQL identifier (letters, digits, _)")
    return value


def _number(stream: str, field: str, value: Any, *, minimum: float, maximum: float | None, whole: bool) -> Any:
    kind = int if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _fail(stream, field, f"{value!r} is not a {'whole ' if whole else ''}number")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise _fail(stream, field, f"{value} must be at least {minimum}{upper}")
    return value


def parse_stream(name: str, raw: Any, defaults: dict[str, Any]) -> Stream:
    if not isinstance(name, str) or not _STREAM_NAME.match(name):
        raise _fail(str(name), "name", "stream names are lower_snake_case (they become task ids)")
    if not isinstance(raw, dict):
        raise _fail(name, "(stream)", "a stream is a mapping of settings")
    unknown = set(raw) - _STREAM_KEYS
    if unknown:
        raise _fail(name, sorted(unknown)[0], f"unknown setting; known settings are {sorted(_STREAM_KEYS)}")
    for required in ("source", "key", "order_by", "sobject", "external_id", "fields"):
        if required not in raw:
            raise _fail(name, required, "missing")

    source = raw["source"]
    if not isinstance(source, str) or source.count(".") != 1:
        raise _fail(name, "source", f"{source!r} must be schema.table_or_view")
    schema, table = source.split(".")
    _identifier(name, "source", schema)
    _identifier(name, "source", table)

    key = _identifier(name, "key", raw["key"])
    order_by = raw["order_by"]
    if not isinstance(order_by, list) or not order_by:
        raise _fail(name, "order_by", "must be a list of columns, for example [updated_at, id]")
    order_by = tuple(_identifier(name, "order_by", c) for c in order_by)
    if len(set(order_by)) != len(order_by):
        raise _fail(name, "order_by", "lists a column twice")
    if order_by[-1] != key:
        raise _fail(
            name, "order_by", f"must end with the key column '{key}' so the order is total (ties broken by key)"
        )
    if len(order_by) < 2:
        raise _fail(name, "order_by", "needs a change timestamp column first, for example [updated_at, id]")

    sobject = raw["sobject"]
    if not isinstance(sobject, str) or not _SF_NAME.match(sobject):
        raise _fail(name, "sobject", f"{sobject!r} is not a Salesforce object API name")

    external_id = raw["external_id"]
    if not isinstance(external_id, dict) or set(external_id) != {"field", "column"}:
        raise _fail(name, "external_id", "must be {field: <Salesforce external id field>, column: <source column>}")
    ext_field = external_id["field"]
    if not isinstance(ext_field, str) or not _SF_NAME.match(ext_field):
        raise _fail(name, "external_id.field", f"{ext_field!r} is not a Salesforce field API name")
    ext_column = _identifier(name, "external_id.column", external_id["column"])

    fields = raw["fields"]
    if not isinstance(fields, dict) or not fields:
        raise _fail(name, "fields", "must map Salesforce field names to source columns")
    mapping = []
    seen_lower: set[str] = {ext_field.lower()}
    for sf_field, column in fields.items():
        if not isinstance(sf_field, str) or not _SF_NAME.match(sf_field):
            raise _fail(name, f"fields.{sf_field}", "is not a Salesforce field API name")
        if sf_field.lower() in seen_lower:
            raise _fail(
                name,
                f"fields.{sf_field}",
                "is mapped twice (or is the external id field, which is set from external_id)",
            )
        seen_lower.add(sf_field.lower())
        mapping.append((sf_field, _identifier(name, f"fields.{sf_field}", column)))

    settings = {**defaults, **{k: raw[k] for k in _DEFAULTS if k in raw}}
    return Stream(
        name=name,
        source_schema=schema,
        source_table=table,
        key=key,
        order_by=order_by,
        sobject=sobject,
        external_id_field=ext_field,
        external_id_column=ext_column,
        fields=tuple(mapping),
        batch_size=_number(name, "batch_size", settings["batch_size"], minimum=1, maximum=MAX_BATCH_SIZE, whole=True),
        max_records_per_run=_number(
            name, "max_records_per_run", settings["max_records_per_run"], minimum=1, maximum=None, whole=True
        ),
        max_minutes_per_run=_number(
            name, "max_minutes_per_run", settings["max_minutes_per_run"], minimum=0.01, maximum=None, whole=False
        ),
        settle_seconds=_number(
            name, "settle_seconds", settings["settle_seconds"], minimum=0, maximum=None, whole=False
        ),
    )


def parse_config(raw: Any, *, origin: str = "streams config") -> dict[str, Stream]:
    if not isinstance(raw, dict) or "streams" not in raw:
        raise StreamConfigError(f"{origin}: expected a mapping with a 'streams' section")
    unknown = set(raw) - {"defaults", "streams"}
    if unknown:
        raise StreamConfigError(f"{origin}: unknown section {sorted(unknown)[0]!r}; use 'defaults' and 'streams'")
    defaults = dict(_DEFAULTS)
    raw_defaults = raw.get("defaults") or {}
    if not isinstance(raw_defaults, dict) or set(raw_defaults) - set(_DEFAULTS):
        raise StreamConfigError(f"{origin}: 'defaults' may set only {sorted(_DEFAULTS)}")
    defaults.update(raw_defaults)
    streams_raw = raw["streams"]
    if not isinstance(streams_raw, dict) or not streams_raw:
        raise StreamConfigError(f"{origin}: 'streams' must map stream names to their settings")
    streams = {name: parse_stream(name, settings, defaults) for name, settings in streams_raw.items()}
    targets: dict[tuple[str, str], str] = {}
    for stream in streams.values():
        target = (stream.sobject, stream.external_id_field)
        if target in targets:
            raise _fail(stream.name, "sobject", f"writes the same object and external id as stream '{targets[target]}'")
        targets[target] = stream.name
    return streams


def config_path() -> Path:
    return Path(os.environ.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG_PATH)


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
