"""The CRM Export page and its API, mounted in Airflow's API server at /crm-export.

Every route needs a signed-in Airflow user (Airflow's own token, from the UI's
cookie or a Bearer header). Changes go through Airflow's REST API *with the
caller's token*, so Airflow checks the same permissions it checks for Admin >
Variables and for triggering a DAG, and writes its own audit log entry; this
app logs who did what as well.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import psycopg
import requests
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel

from include.crm_export import __version__
from include.crm_export.config import load_streams, stream_definition
from include.crm_export.db import page_queries, run_history, source, watermarks
from include.crm_export.db.connection import Database
from include.crm_export.db.migrate import migrate
from include.crm_export.decisions import Lag
from include.crm_export.errors import SettingsError, StreamBusy, StreamConfigError, StreamStuck
from include.crm_export.names import ERROR_STATUSES, EXPORT_DAG_ID, PAUSE_ON_ERROR_VARIABLE, REEXPORT_DAG_ID
from include.crm_export.pause_variable import PAUSE_ON_ERROR_DESCRIPTION, parse_pause_on_error

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")

app = FastAPI(title="CRM Export", docs_url=None, redoc_url=None, openapi_url=None)


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get("_token")


async def signed_in_user(request: Request) -> Any:
    from airflow.api_fastapi.core_api.security import resolve_user_from_token

    token = _token(request)
    if not token:
        raise HTTPException(status_code=401, detail="Sign in to Airflow first.")
    return await resolve_user_from_token(token)


User = Annotated[Any, Depends(signed_in_user)]


def _user_name(user: Any) -> str:
    return getattr(user, "get_name", lambda: str(user))()


def _airflow(request: Request, method: str, path: str, **kwargs: Any) -> requests.Response:
    """Call Airflow's REST API as the caller (their token, their permissions)."""
    base = f"{request.url.scheme}://{request.url.netloc}"
    session = requests.Session()
    session.trust_env = False
    return session.request(
        method,
        f"{base}/api/v2/{path}",
        headers={"Authorization": f"Bearer {_token(request)}"},
        timeout=30,
        **kwargs,
    )


def _refused(response: requests.Response, doing: str) -> HTTPException:
    if response.status_code in (401, 403):
        return HTTPException(status_code=403, detail=f"Airflow does not allow you to {doing}.")
    return HTTPException(
        status_code=502, detail=f"Airflow answered {response.status_code} to {doing}: {response.text[:300]}"
    )


_migrated = False


def _db() -> psycopg.Connection:
    global _migrated
    conn = Database().connect(application_name="crm-export page", statement_timeout_ms=30_000)
    if not _migrated:  # once per API server process, not per request
        migrate(conn)
        _migrated = True
    return conn


@app.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page(request: Request) -> Any:
    from airflow.api_fastapi.core_api.security import resolve_user_from_token

    token = _token(request)
    try:
        if not token:
            raise HTTPException(status_code=401)
        await resolve_user_from_token(token)
    except HTTPException:
        from airflow.api_fastapi.app import get_auth_manager

        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)))
    return HTMLResponse(PAGE.read_text().replace("{{CRM_EXPORT_VERSION}}", __version__))


@app.get("/api/streams")
def streams(user: User) -> list[dict[str, Any]]:
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
                    f"/dags/{EXPORT_DAG_ID}/runs/{row['last_run_id']}/tasks/{stream.task_id}"
                    if held and row.get("last_run_id")
                    else None
                ),
            }
        )
    return result


@app.get("/api/runs")
def runs(
    user: User,
    days: Annotated[int, Query(ge=1, le=366)] = 14,
    stream: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=2000)] = 500,
) -> dict[str, Any]:
    """Run history for the charts and the table: the newest runs, and open errors by code per stream and day."""
    configured = load_streams()
    with _db() as conn:
        recent = run_history.recent_runs(conn, days=days, stream=stream or None, limit=limit)
        by_day = run_history.open_errors_by_day(conn, days=days, stream=stream or None)
    for run in recent:
        known = configured.get(run["stream"])
        run["task_url"] = (
            f"/dags/{EXPORT_DAG_ID}/runs/{quote(run['run_id'], safe='')}/tasks/{known.task_id}"
            if known is not None and run["dag_id"] == EXPORT_DAG_ID
            else None
        )
    return {"days": days, "runs": recent, "open_errors_by_day": by_day}


@app.get("/api/late-rows")
def late_rows(user: User) -> dict[str, Any]:
    """Whether the export's database user can see every writer (README, "Late rows"); the remedy if not."""
    with _db() as conn:
        return {"warning": source.activity_blind_spot(conn)}


def _lag(conn: psycopg.Connection, stream: Any, position: list[str] | None) -> Lag | None:
    """A stream's lag, or None when its source cannot be read (the page still shows the rest)."""
    try:
        return source.lag(conn, stream, position, source.column_types(conn, stream))
    except (psycopg.Error, StreamConfigError) as exc:
        log.warning("CRM Export page: no lag for stream %s: %s", stream.name, exc)
        return None


@app.get("/api/error-counts")
def error_counts(user: User) -> list[dict[str, Any]]:
    with _db() as conn:
        return page_queries.error_counts(conn)


@app.get("/api/errors")
def errors(
    user: User,
    status: Annotated[str, Query()] = "open",
    stream: Annotated[str | None, Query()] = None,
    error_code: Annotated[str | None, Query()] = None,
    after_at: Annotated[datetime | None, Query()] = None,
    after_id: Annotated[int | None, Query()] = None,
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
def get_pause_on_error(request: Request, user: User) -> dict[str, Any]:
    response = _airflow(request, "GET", f"variables/{PAUSE_ON_ERROR_VARIABLE}")
    if response.status_code == 404:
        return {"variable": PAUSE_ON_ERROR_VARIABLE, "value": None, "pause_on_error": True, "readable": True}
    if response.status_code != 200:
        raise _refused(response, f"read the Variable {PAUSE_ON_ERROR_VARIABLE}")
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
def set_pause_on_error(request: Request, change: PauseOnErrorRequest, user: User) -> dict[str, Any]:
    value = "true" if change.pause_on_error else "false"
    current = _airflow(request, "GET", f"variables/{PAUSE_ON_ERROR_VARIABLE}")
    if current.status_code == 404:
        response = _airflow(
            request,
            "POST",
            "variables",
            json={"key": PAUSE_ON_ERROR_VARIABLE, "value": value, "description": PAUSE_ON_ERROR_DESCRIPTION},
        )
    elif current.status_code == 200:
        body = {"key": PAUSE_ON_ERROR_VARIABLE, "value": value, "description": current.json().get("description")}
        response = _airflow(request, "PATCH", f"variables/{PAUSE_ON_ERROR_VARIABLE}", json=body)
    else:
        raise _refused(current, f"read the Variable {PAUSE_ON_ERROR_VARIABLE}")
    if response.status_code not in (200, 201):
        raise _refused(response, f"change the Variable {PAUSE_ON_ERROR_VARIABLE}")
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
    reason: str | None = None


@app.post("/api/streams/{stream_name}/reposition")
def reposition_stream(stream_name: str, ask: RepositionRequest, user: User) -> dict[str, Any]:
    """Re-export a stream from the start or from a change time: a confirmed, recorded act."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    stream = load_streams().get(stream_name)
    if stream is None:
        raise HTTPException(status_code=404, detail=f"Unknown stream {stream_name!r}")
    if not ask.confirm:
        raise HTTPException(status_code=400, detail="Re-positioning re-exports records: confirm it.")
    allowed = get_auth_manager().is_authorized_dag(
        method="PUT", user=user, access_entity=DagAccessEntity.RUN, details=DagDetails(id=EXPORT_DAG_ID)
    )
    if not allowed:
        raise HTTPException(status_code=403, detail=f"Airflow does not allow you to change runs of {EXPORT_DAG_ID}.")
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
    stream: str | None = None
    error_code: str | None = None


@app.post("/api/reexport")
def reexport_now(request: Request, ask: ReexportRequest, user: User) -> dict[str, Any]:
    conf: dict[str, Any] = {}
    if ask.stream:
        if ask.stream not in load_streams():
            raise HTTPException(status_code=400, detail=f"Unknown stream {ask.stream!r}")
        conf["streams"] = [ask.stream]
    if ask.error_code:
        conf["error_codes"] = [ask.error_code]
    response = _airflow(request, "POST", f"dags/{REEXPORT_DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf})
    if response.status_code not in (200, 201):
        raise _refused(response, f"trigger {REEXPORT_DAG_ID}")
    run_id = response.json()["dag_run_id"]
    log.warning("CRM Export page: %s triggered %s %s with %s", _user_name(user), REEXPORT_DAG_ID, run_id, conf)
    dag = _airflow(request, "GET", f"dags/{REEXPORT_DAG_ID}")
    paused = dag.status_code == 200 and dag.json().get("is_paused")
    return {
        "dag_id": REEXPORT_DAG_ID,
        "dag_run_id": run_id,
        "conf": conf,
        "url": f"/dags/{REEXPORT_DAG_ID}/runs/{run_id}",
        "note": f"{REEXPORT_DAG_ID} is paused: the run waits until you switch the DAG on." if paused else "",
    }
