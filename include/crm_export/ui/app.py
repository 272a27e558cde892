"""The CRM Export page and its API, mounted in Airflow's API server at /crm-export.

Every route is authorized by Airflow's auth manager for the signed-in user
(Airflow's own token, from the UI's cookie or a Bearer header), as Airflow
authorizes the same data: a route declares what it needs with ``@needs``,
and a route that declares nothing is refused (deny by default). Changes go
through Airflow's REST API *with the caller's token*, so Airflow checks the
same permissions again and writes its own audit log entry; that API is
reached at ``[api] base_url`` (its path prefix included), never at the host
a request names. SECURITY.md states the whole model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import psycopg
import requests
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from include.crm_export import __version__
from include.crm_export.config import Stream, load_streams, stream_definition
from include.crm_export.db import capture, page_queries, run_history, source, watermarks
from include.crm_export.db.connection import Database
from include.crm_export.db.migrate import migrate
from include.crm_export.decisions import Lag
from include.crm_export.errors import PARENT_NOT_EXPORTED, SettingsError, StreamBusy, StreamConfigError, StreamStuck
from include.crm_export.export.captured import captured_lag
from include.crm_export.names import ERROR_STATUSES, EXPORT_DAG_ID, PAUSE_ON_ERROR_VARIABLE, REEXPORT_DAG_ID
from include.crm_export.pause_variable import PAUSE_ON_ERROR_DESCRIPTION, parse_pause_on_error
from include.crm_export.quoting import one_line, url_segment

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")

# Bounds of what the page API takes: a reason is a sentence or a ticket, a code is Salesforce's or ours.
REASON_MAX_CHARS = 2_000
NAME_MAX_CHARS = 200
ERROR_CODE_PATTERN = r"^[A-Za-z0-9_]{1,100}$"
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"  # a name on one line
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text holds no NUL
AIRFLOW_API_TIMEOUT = (3.05, 15)  # seconds to connect, to answer


class NotSignedIn(Exception):
    """No Airflow token, or one Airflow does not accept."""


async def _authorize(request: Request) -> None:
    """Every route's first step: who is asking, and does Airflow let them do what the route declares."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.core_api.security import resolve_user_from_token

    token = _token(request)
    if not token:
        raise NotSignedIn
    try:
        user = await resolve_user_from_token(token)
    except HTTPException as exc:
        raise NotSignedIn from exc
    access = declared_access(request.scope.get("endpoint"))
    if access is None:
        raise HTTPException(status_code=403, detail="This route declares no permission check, so it is refused.")
    # The auth manager may ask a database (FAB) or a server (Keycloak): never on the event loop.
    if not await run_in_threadpool(access.allowed, get_auth_manager(), user):
        raise _not_allowed(access.needs)
    request.state.user = user


app = FastAPI(
    title="CRM Export",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
    dependencies=[Depends(_authorize)],
)
# A trailing-slash redirect would be built from the request's Host header: answer 404 instead.
app.router.redirect_slashes = False


@app.middleware("http")
async def _not_cached(request: Request, call_next: Callable[[Request], Any]) -> Response:
    """Answers carry customer data (record keys, external ids): no browser or proxy keeps them."""
    response: Response = await call_next(request)
    response.headers["Cache-Control"] = "no-store"
    return response


@dataclass(frozen=True)
class Access:
    """What a route needs, asked of Airflow's auth manager for the signed-in user."""

    needs: str  # for the refusal: "Airflow does not allow you to <needs>."
    allowed: Callable[[Any, Any], bool]  # (auth manager, user) -> bool


def dag_access(method: str, dag_id: str, entity: str | None = None) -> Access:
    """Access to a DAG, or to its runs (``entity="RUN"``), as Airflow's own pages ask for it."""

    def allowed(manager: Any, user: Any) -> bool:
        from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
        from airflow.models.dag import DagModel

        return bool(
            manager.is_authorized_dag(
                method=method,
                user=user,
                access_entity=DagAccessEntity[entity] if entity else None,
                # With [core] multi_team, the DAG's team decides as well, exactly as Airflow's own routes ask.
                details=DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id)),
            )
        )

    return Access(f"{'read' if method == 'GET' else 'change'} {'runs of ' if entity else ''}the DAG {dag_id}", allowed)


def variable_access(method: str, key: str) -> Access:
    def allowed(manager: Any, user: Any) -> bool:
        from airflow.api_fastapi.auth.managers.models.resource_details import VariableDetails
        from airflow.models.variable import Variable

        details = VariableDetails(key=key, team_name=Variable.get_team_name(key))
        return bool(manager.is_authorized_variable(method=method, user=user, details=details))

    return Access(f"{'read' if method == 'GET' else 'change'} the Variable {key}", allowed)


READ_EXPORT = dag_access("GET", EXPORT_DAG_ID)
READ_EXPORT_RUNS = dag_access("GET", EXPORT_DAG_ID, "RUN")
READ_REEXPORT_RUNS = dag_access("GET", REEXPORT_DAG_ID, "RUN")
REPOSITION = dag_access("PUT", EXPORT_DAG_ID, "RUN")
TRIGGER_REEXPORT = dag_access("POST", REEXPORT_DAG_ID, "RUN")
READ_PAUSE = variable_access("GET", PAUSE_ON_ERROR_VARIABLE)
CHANGE_PAUSE = variable_access("PUT", PAUSE_ON_ERROR_VARIABLE)


_ACCESS_ATTRIBUTE = "crm_export_access"


def declared_access(endpoint: Any) -> Access | None:
    """The permission a route's endpoint declared with ``@needs``, if any."""
    access = getattr(endpoint, _ACCESS_ATTRIBUTE, None)
    return access if isinstance(access, Access) else None


def _not_allowed(doing: str, said: str = "") -> HTTPException:
    """The one refusal a user reads, whether the page or Airflow's REST API said no."""
    return HTTPException(status_code=403, detail=f"Airflow does not allow you to {doing}.{said}")


def needs(access: Access) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a route's permission; put it under the route decorator."""

    def declare(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        setattr(endpoint, _ACCESS_ATTRIBUTE, access)
        return endpoint

    return declare


def _current_user(request: Request) -> Any:
    return request.state.user


User = Annotated[Any, Depends(_current_user)]


@app.exception_handler(NotSignedIn)
async def _sign_in_first(request: Request, exc: NotSignedIn) -> Response:
    if request.scope.get("endpoint") is page:
        from airflow.api_fastapi.app import get_auth_manager

        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)))
    return JSONResponse({"detail": "Sign in to Airflow first."}, status_code=401)


@app.exception_handler(StreamConfigError)
async def _stream_config_error(request: Request, exc: StreamConfigError) -> Response:
    """The stream file or a source table is not as a stream says: the message says what to fix."""
    return JSONResponse({"detail": str(exc)}, status_code=422)


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get("_token")


def _user_name(user: Any) -> str:
    return one_line(str(getattr(user, "get_name", lambda: str(user))()))


def airflow_base_url() -> str:
    """This API server's own URL as configured: ``[api] base_url`` (path prefix kept), else its port on loopback.

    Never the URL of the request: its Host header is the caller's to choose.
    """
    from airflow.configuration import conf

    base = (conf.get("api", "base_url", fallback="") or "").strip()
    if not base:
        host = conf.get("api", "host", fallback="") or ""
        host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        host = f"[{host}]" if ":" in host else host  # an IPv6 address
        scheme = "https" if conf.get("api", "ssl_cert", fallback="") else "http"
        base = f"{scheme}://{host}:{conf.getint('api', 'port', fallback=8080)}"
    return base.rstrip("/")


def airflow_link(*segments: str) -> str:
    """A link into Airflow's UI (its path prefix included), every segment URL-encoded."""
    prefix = urlsplit(airflow_base_url()).path.rstrip("/")
    return prefix + "/" + "/".join(url_segment(segment) for segment in segments)


def _airflow(request: Request, method: str, path: str, doing: str, **kwargs: Any) -> requests.Response:
    """Call Airflow's REST API as the caller (their token, their permissions)."""
    base = airflow_base_url()
    try:
        with requests.Session() as session:
            session.trust_env = False  # no proxy from the environment: the token goes to base_url only
            return session.request(
                method,
                f"{base}/api/v2/{path}",
                headers={"Authorization": f"Bearer {_token(request)}"},
                timeout=AIRFLOW_API_TIMEOUT,
                allow_redirects=False,
                # trust_env off also drops REQUESTS_CA_BUNDLE: honour it for an https base_url on an internal CA.
                verify=os.environ.get("REQUESTS_CA_BUNDLE") or True,
                **kwargs,
            )
    except requests.RequestException as exc:
        log.warning("CRM Export page: Airflow's REST API at %s did not answer: %s", base, exc)
        raise HTTPException(
            status_code=502,
            detail=f"Airflow's REST API did not answer at {base}/api/v2 to {doing} ({type(exc).__name__}). "
            "Set [api] base_url to the URL this API server is reached at.",
        ) from None


def _airflow_detail(response: requests.Response) -> str | None:
    """Airflow's own explanation of an answer (its JSON ``detail``), on one line; None if it gave none."""
    try:
        body = response.json()
    except ValueError:
        return None
    detail = body.get("detail") if isinstance(body, dict) else None
    return one_line(detail)[:300] if isinstance(detail, str) else None


def _refused(response: requests.Response, doing: str) -> HTTPException:
    detail = _airflow_detail(response)
    said = f" (Airflow said: {detail})" if detail else ""
    if response.status_code in (401, 403):
        return _not_allowed(doing, said)
    return HTTPException(status_code=502, detail=f"Airflow answered {response.status_code} to {doing}.{said}")


def _variable_absent(response: requests.Response) -> bool:
    """Airflow's own 404 for the Variable (its detail names the key): not a proxy's 404 for a wrong path."""
    detail = _airflow_detail(response)
    return response.status_code == 404 and detail is not None and PAUSE_ON_ERROR_VARIABLE in detail


_migrated = False


def _db() -> psycopg.Connection:
    global _migrated
    conn = Database().connect(application_name="crm-export page", statement_timeout_ms=30_000)
    if not _migrated:  # once per API server process, not per request
        migrate(conn)
        _migrated = True
    return conn


@app.get("/", response_class=HTMLResponse, include_in_schema=False)
@needs(READ_EXPORT)
def page() -> Any:
    return HTMLResponse(PAGE.read_text().replace("{{CRM_EXPORT_VERSION}}", __version__))


@app.get("/api/streams")
@needs(READ_EXPORT)
def streams() -> list[dict[str, Any]]:
    configured = load_streams()
    with _db() as conn:
        rows = {row["stream"]: row for row in page_queries.stream_status(conn)}
        lags = {name: _lag(conn, stream, rows.get(name, {}).get("position")) for name, stream in configured.items()}
        exporting = watermarks.exporting_now(conn, list(configured.values()))
    result = []
    for name, stream in configured.items():
        row = rows.get(name, {})
        lag = lags[name]
        held = row.get("held_record_key")
        result.append(
            {
                "stream": name,
                "source": stream.source,
                "sobject": stream.sobject,
                "watermark": row.get("position"),
                "last_run_at": row.get("last_run_at"),
                "last_run_id": row.get("last_run_id"),
                "last_run_exported": row.get("last_run_exported", 0),
                "records_exported": row.get("records_exported", 0),
                "open_errors": row.get("open_errors", 0),
                "lag_rows": lag.rows if lag else None,
                "lag_exact": lag.exact if lag else None,
                "watermark_age_seconds": lag.watermark_age_seconds if lag else None,
                "exporting": name in exporting,
                "held": held is not None,
                "held_record_key": held,
                "held_external_id": row.get("held_external_id"),
                "held_since": row.get("held_since"),
                "held_error_code": row.get("held_error_code"),
                "held_error_message": row.get("held_error_message"),
                "held_task_url": (
                    airflow_link("dags", EXPORT_DAG_ID, "runs", row["last_run_id"], "tasks", stream.task_id)
                    if held and row.get("last_run_id")
                    else None
                ),
                "parents": list(stream.parent_streams),
                "held_waiting_for": _waiting_for(stream, row) if held else None,
            }
        )
    return result


def _waiting_for(stream: Stream, row: dict[str, Any]) -> str | None:
    """The parent stream a held child waits for (its held record's parent is not in Salesforce), if so."""
    if row.get("held_error_code") != PARENT_NOT_EXPORTED:
        return None
    for field in row.get("held_error_fields") or ():
        lookup = stream.lookup(field)
        if lookup is not None and lookup.parent_stream is not None:
            return lookup.parent_stream
    return None


StreamFilter = Annotated[str | None, Query(max_length=NAME_MAX_CHARS, pattern=NO_CONTROL_CHARACTERS)]
ErrorCodeFilter = Annotated[str | None, Query(pattern=ERROR_CODE_PATTERN)]


@app.get("/api/runs")
@needs(READ_EXPORT_RUNS)
def runs(
    user: User,
    days: Annotated[int, Query(ge=1, le=366)] = 14,
    stream: StreamFilter = None,
    limit: Annotated[int, Query(ge=1, le=2000)] = 500,
) -> dict[str, Any]:
    """Run history for the charts and the table: the newest runs, and open errors by code per stream and day.

    Runs of CRMExport_ExportError are listed to those Airflow lets read them.
    """
    from airflow.api_fastapi.app import get_auth_manager

    dag_ids = [EXPORT_DAG_ID]
    if READ_REEXPORT_RUNS.allowed(get_auth_manager(), user):
        dag_ids.append(REEXPORT_DAG_ID)
    configured = load_streams()
    with _db() as conn:
        recent = run_history.recent_runs(conn, days=days, stream=stream or None, limit=limit, dag_ids=dag_ids)
        by_day = run_history.open_errors_by_day(conn, days=days, stream=stream or None)
    for run in recent:
        known = configured.get(run["stream"])
        run["task_url"] = (
            airflow_link("dags", EXPORT_DAG_ID, "runs", run["run_id"], "tasks", known.task_id)
            if known is not None and run["dag_id"] == EXPORT_DAG_ID
            else None
        )
    return {"days": days, "runs": recent, "open_errors_by_day": by_day}


@app.get("/api/late-rows")
@needs(READ_EXPORT)
def late_rows() -> dict[str, Any]:
    """Whether the export's database user can see every writer (README, "Late rows"); the remedy if not."""
    with _db() as conn:
        return {"warning": source.activity_blind_spot(conn)}


def _lag(conn: psycopg.Connection, stream: Any, position: list[str] | None) -> Lag | None:
    """A stream's lag, or None when its source cannot be read (the page still shows the rest)."""
    try:
        types = source.column_types(conn, stream)
        if stream.logical:
            return captured_lag(conn, stream, position, types)
        return source.lag(conn, stream, position, types)
    except (psycopg.Error, StreamConfigError) as exc:
        log.warning("CRM Export page: no lag for stream %s: %s", stream.name, exc)
        return None


@app.get("/api/capture-slots")
@needs(READ_EXPORT)
def capture_slots() -> list[dict[str, Any]]:
    """Every crm-export replication slot of this database, the WAL the server keeps for it, and the capture
    stream that follows it (None: no stream of the file does, so nothing moves it and its WAL only grows)."""
    with _db() as conn:
        return capture.slots(conn, list(load_streams().values()))


@app.get("/api/error-counts")
@needs(READ_EXPORT)
def error_counts() -> list[dict[str, Any]]:
    with _db() as conn:
        return page_queries.error_counts(conn)


@app.get("/api/errors")
@needs(READ_EXPORT)
def errors(
    status: Annotated[str, Query(max_length=NAME_MAX_CHARS, pattern=NO_CONTROL_CHARACTERS)] = "open",
    stream: StreamFilter = None,
    error_code: ErrorCodeFilter = None,
    after_at: Annotated[datetime | None, Query()] = None,
    after_id: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    if status not in ERROR_STATUSES:
        raise HTTPException(status_code=400, detail=f"status must be one of {list(ERROR_STATUSES)}")
    after = (after_at, after_id or 0) if after_at else None
    with _db() as conn:
        rows = page_queries.error_page(
            conn, status=status, stream=stream or None, error_code=error_code or None, after=after, limit=limit
        )
    cursor = {"after_at": rows[-1]["first_failed_at"], "after_id": rows[-1]["id"]} if len(rows) == limit else None
    return {"errors": rows, "next": cursor}


@app.get("/api/pause-on-error")
@needs(READ_PAUSE)
def get_pause_on_error(request: Request) -> dict[str, Any]:
    doing = f"read the Variable {PAUSE_ON_ERROR_VARIABLE}"
    response = _airflow(request, "GET", f"variables/{PAUSE_ON_ERROR_VARIABLE}", doing)
    if _variable_absent(response):
        return {"variable": PAUSE_ON_ERROR_VARIABLE, "value": None, "pause_on_error": True, "readable": True}
    if response.status_code != 200:
        raise _refused(response, doing)
    value = response.json()["value"]
    try:
        return {
            "variable": PAUSE_ON_ERROR_VARIABLE,
            "value": value,
            "pause_on_error": parse_pause_on_error(value),
            "readable": True,
        }
    except SettingsError as exc:  # an unreadable value: show it, the DAG refuses it too
        return {
            "variable": PAUSE_ON_ERROR_VARIABLE,
            "value": value,
            "pause_on_error": None,
            "readable": False,
            "problem": str(exc),
        }


class PauseOnErrorRequest(BaseModel):
    pause_on_error: bool


@app.put("/api/pause-on-error")
@needs(CHANGE_PAUSE)
def set_pause_on_error(request: Request, change: PauseOnErrorRequest, user: User) -> dict[str, Any]:
    value = "true" if change.pause_on_error else "false"
    reading = f"read the Variable {PAUSE_ON_ERROR_VARIABLE}"
    changing = f"change the Variable {PAUSE_ON_ERROR_VARIABLE}"
    current = _airflow(request, "GET", f"variables/{PAUSE_ON_ERROR_VARIABLE}", reading)
    if _variable_absent(current):
        response = _airflow(
            request,
            "POST",
            "variables",
            changing,
            json={"key": PAUSE_ON_ERROR_VARIABLE, "value": value, "description": PAUSE_ON_ERROR_DESCRIPTION},
        )
    elif current.status_code == 200:
        body = {"key": PAUSE_ON_ERROR_VARIABLE, "value": value, "description": current.json().get("description")}
        response = _airflow(request, "PATCH", f"variables/{PAUSE_ON_ERROR_VARIABLE}", changing, json=body)
    else:
        raise _refused(current, reading)
    if response.status_code not in (200, 201):
        raise _refused(response, changing)
    log.warning(
        "CRM Export page: %s set %s to %s%s",
        _user_name(user),
        PAUSE_ON_ERROR_VARIABLE,
        value,
        "" if change.pause_on_error else " (rejected records will now be skipped; Salesforce may become incomplete)",
    )
    return {
        "variable": PAUSE_ON_ERROR_VARIABLE,
        "value": value,
        "pause_on_error": change.pause_on_error,
        "changed_by": _user_name(user),
    }


class RepositionRequest(BaseModel):
    confirm: bool = False
    from_change_time: datetime | None = None
    reason: str | None = Field(default=None, max_length=REASON_MAX_CHARS, pattern=NO_NUL)


@app.post("/api/streams/{stream_name}/reposition")
@needs(REPOSITION)
def reposition_stream(stream_name: str, ask: RepositionRequest, user: User) -> dict[str, Any]:
    """Re-export a stream from the start or from a change time: a confirmed, recorded act."""
    stream = load_streams().get(stream_name)
    if stream is None:
        raise HTTPException(status_code=404, detail=f"Unknown stream {stream_name[:NAME_MAX_CHARS]!r}")
    if not ask.confirm:
        raise HTTPException(status_code=400, detail="Re-positioning re-exports records: confirm it.")
    by = f"ui:{_user_name(user)}"
    with _db() as conn:
        try:
            done = watermarks.reposition(
                conn,
                stream,
                definition=stream_definition(stream, source.column_types(conn, stream)),
                from_change_time=ask.from_change_time,
                by=by,
                reason=ask.reason,
            )
        except (StreamBusy, StreamStuck) as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
    log.warning("CRM Export page: %s re-positioned stream %s to %s", by, stream.name, done["new_position"])
    return done


class ReexportRequest(BaseModel):
    stream: str | None = Field(default=None, max_length=NAME_MAX_CHARS, pattern=NO_CONTROL_CHARACTERS)
    error_code: str | None = Field(default=None, pattern=ERROR_CODE_PATTERN)


@app.post("/api/reexport")
@needs(TRIGGER_REEXPORT)
def reexport_now(request: Request, ask: ReexportRequest, user: User) -> dict[str, Any]:
    conf: dict[str, Any] = {}
    if ask.stream:
        if ask.stream not in load_streams():
            raise HTTPException(status_code=400, detail=f"Unknown stream {ask.stream!r}")
        conf["streams"] = [ask.stream]
    if ask.error_code:
        conf["error_codes"] = [ask.error_code]
    doing = f"trigger {REEXPORT_DAG_ID}"
    response = _airflow(
        request, "POST", f"dags/{REEXPORT_DAG_ID}/dagRuns", doing, json={"logical_date": None, "conf": conf}
    )
    if response.status_code not in (200, 201):
        raise _refused(response, doing)
    run_id = response.json()["dag_run_id"]
    log.warning("CRM Export page: %s triggered %s %s with %s", _user_name(user), REEXPORT_DAG_ID, run_id, conf)
    dag = _airflow(request, "GET", f"dags/{REEXPORT_DAG_ID}", f"read the DAG {REEXPORT_DAG_ID}")
    paused = dag.status_code == 200 and dag.json().get("is_paused")
    return {
        "dag_id": REEXPORT_DAG_ID,
        "dag_run_id": run_id,
        "conf": conf,
        "url": airflow_link("dags", REEXPORT_DAG_ID, "runs", run_id),
        "note": f"{REEXPORT_DAG_ID} is paused: the run waits until you switch the DAG on." if paused else "",
    }
