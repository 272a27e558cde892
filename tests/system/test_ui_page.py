"""The "CRM Export" page: its API over HTTP against a real Airflow API server, and the page in Chromium.

The local run is started from scratch with five users: admin, viewer, nobody
(signed in, no role), outsider (a viewer who may see another DAG only) and
exporter (a viewer who may see CRMExport only), under an auth manager with
per-DAG access (tests/support/per_dag_auth_manager.py). Its ``[api] base_url``
is a reverse proxy with a path prefix, as behind a company's ingress: the page
must reach Airflow's REST API there, never at the host a request names. Its
first CRMExport run is held at a demo contact, which is what the page shows.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import psycopg
import pytest
import requests

from devstack.stack import PROJECT_ROOT
from tests.support.helpers import free_port, start_local_run, stop_local_run

SCREENSHOT = PROJECT_ROOT / ".crm_export" / "artifacts" / "crm-export-page.png"
PREFIX = "/airflow"
USERS = {"admin": "admin", "viewer": "viewer", "nobody": "", "outsider": "viewer", "exporter": "viewer"}


class Recorder(ThreadingHTTPServer):
    """An HTTP server on loopback that records what reaches it; ``forward_to`` makes it a reverse proxy.

    As a proxy it forwards only paths under PREFIX (what an ingress with a path prefix routes to Airflow)
    and answers 404 to anything else.
    """

    def __init__(self, forward_to: int | None = None) -> None:
        self.seen: list[tuple[str, str, bool]] = []  # (method, path, carried a bearer token)
        self.forward_to = forward_to
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                recorder.seen.append((self.command, self.path, "authorization" in {k.lower() for k in self.headers}))
                status, headers, content = 404, {"Content-Type": "text/plain"}, b"nothing here: a banner to steal"
                if recorder.forward_to and self.path.startswith(PREFIX + "/"):
                    answer = requests.request(
                        self.command,
                        f"http://127.0.0.1:{recorder.forward_to}{self.path}",
                        headers={k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")},
                        data=body,
                        allow_redirects=False,
                        timeout=60,
                    )
                    status, content = answer.status_code, answer.content
                    headers = {k: v for k, v in answer.headers.items() if k.lower() in ("content-type", "location")}
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


SERVERS: dict[str, Recorder] = {}
LOCAL: dict[str, object] = {}


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui") / "local"
    (root / "airflow").mkdir(parents=True)
    (root / "airflow" / "simple_auth_manager_passwords.json").write_text(json.dumps({u: u for u in USERS}))
    port = free_port()
    SERVERS["proxy"] = Recorder(forward_to=port)
    SERVERS["elsewhere"] = Recorder()
    process = start_local_run(
        root,
        port,
        root.parent / "run.log",
        env={
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
            "AIRFLOW__CORE__AUTH_MANAGER": "tests.support.per_dag_auth_manager.PerDagAuthManager",
            "CRM_EXPORT_TEST_DAG_ACCESS": "outsider=some_other_dag,exporter=CRMExport",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{SERVERS['proxy'].server_port}{PREFIX}",
        },
    )
    LOCAL["root"] = root
    try:
        yield f"http://localhost:{port}{PREFIX}"  # Airflow serves everything under base_url's path prefix
    finally:
        stop_local_run(process, root)
        for server in SERVERS.values():
            server.close()


def local_database() -> psycopg.Connection:
    """The local run's project database (its connection as the run wrote it)."""
    conn = json.loads((LOCAL["root"] / "postgres.json").read_text())
    return psycopg.connect(
        host=conn["host"],
        port=conn["port"],
        user=conn["login"],
        password=conn.get("password") or None,
        dbname=conn["schema"],
        autocommit=True,
    )


def token(base: str, user: str) -> str:
    response = requests.post(f"{base}/auth/token", json={"username": user, "password": user}, timeout=30)
    response.raise_for_status()
    return response.json()["access_token"]


def call(base: str, method: str, path: str, user: str | None = "admin", **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {token(base, user)}"} if user else {}
    return requests.request(method, f"{base}{path}", headers=headers, timeout=60, **kwargs)


def variable(base: str) -> str:
    return call(base, "GET", "/api/v2/variables/crm_export_pause_on_error").json()["value"]


def wait_until_held(base: str) -> dict:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        streams = {s["stream"]: s for s in call(base, "GET", "/crm-export/api/streams").json()}
        # subscriptions runs after contacts (its parent), also when contacts is held
        if streams["contacts"]["held"] and streams["subscriptions"]["last_run_at"] is not None:
            return streams
        time.sleep(1)
    raise AssertionError("the first CRMExport run never held the contacts stream")


def test_requests_without_a_session_are_refused(airflow):
    for path in (
        "/crm-export/api/streams",
        "/crm-export/api/errors",
        "/crm-export/api/pause-on-error",
        "/crm-export/api/late-rows",
    ):
        assert call(airflow, "GET", path, user=None).status_code == 401
    assert (
        requests.put(f"{airflow}/crm-export/api/pause-on-error", json={"pause_on_error": False}, timeout=30).status_code
        == 401
    )
    bad = requests.get(f"{airflow}/crm-export/api/streams", headers={"Authorization": "Bearer not-a-token"}, timeout=30)
    assert bad.status_code in (401, 403)
    page = requests.get(f"{airflow}/crm-export/", allow_redirects=False, timeout=30)
    assert page.status_code == 307
    assert "/auth/login" in page.headers["location"]
    assert variable(airflow) == "true"


def test_api_shows_where_each_stream_stands_and_its_errors(airflow):
    streams = wait_until_held(airflow)
    contacts = streams["contacts"]
    assert contacts["held_record_key"] == "137"
    assert contacts["held_error_code"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert "blocked.example" in contacts["held_error_message"]
    assert contacts["last_run_exported"] == 136
    assert contacts["watermark"][1] == "136"
    assert contacts["open_errors"] == 1
    assert (contacts["lag_rows"], contacts["lag_exact"]) == (364, True)  # 137 to 500 wait after the watermark
    assert contacts["watermark_age_seconds"] > 0
    assert contacts["held_task_url"].startswith(f"{PREFIX}/dags/CRMExport/runs/")  # [api] base_url's path prefix
    assert contacts["held_task_url"].endswith("/tasks/export_contacts")
    assert streams["subscriptions"]["held"] is False
    assert streams["subscriptions"]["last_run_exported"] == 150
    assert list(streams) == ["accounts", "contacts", "subscriptions"]  # parents first
    assert (streams["contacts"]["parents"], streams["subscriptions"]["parents"]) == (["accounts"], ["contacts"])
    assert contacts["held_waiting_for"] is None  # held by its own error, not waiting for its account

    page = call(airflow, "GET", "/crm-export/api/errors", params={"status": "open", "stream": "contacts"}).json()
    assert [(e["record_key"], e["error_code"], e["error_fields"]) for e in page["errors"]] == [
        ("137", "FIELD_CUSTOM_VALIDATION_EXCEPTION", ["Email"])
    ]
    assert page["next"] is None
    filtered = call(airflow, "GET", "/crm-export/api/errors", params={"error_code": "UNABLE_TO_LOCK_ROW"}).json()
    assert filtered["errors"] == []
    assert call(airflow, "GET", "/crm-export/api/errors", params={"status": "lost"}).status_code == 400
    counts = call(airflow, "GET", "/crm-export/api/error-counts").json()
    assert [(c["status"], c["stream"], c["error_code"], c["count"]) for c in counts] == [
        ("open", "contacts", "FIELD_CUSTOM_VALIDATION_EXCEPTION", 1)
    ]
    history = call(airflow, "GET", "/crm-export/api/runs", params={"stream": "contacts"}).json()
    held_run = history["runs"][-1]  # the first run: held at the demo's blocked contact
    assert (held_run["outcome"], held_run["exported"], held_run["held_record_key"]) == ("held", 136, "137")
    assert held_run["rejected_by_code"] == {"FIELD_CUSTOM_VALIDATION_EXCEPTION": 1}
    assert held_run["pause_on_error"] is True
    run_in_url = quote(held_run["run_id"], safe="")
    assert held_run["task_url"] == f"{PREFIX}/dags/CRMExport/runs/{run_in_url}/tasks/export_contacts"
    (today,) = {(d["stream"], d["day"]) for d in history["open_errors_by_day"]}
    assert today[0] == "contacts"
    assert history["open_errors_by_day"][0]["open_errors_by_code"] == {"FIELD_CUSTOM_VALIDATION_EXCEPTION": 1}
    assert call(airflow, "GET", "/crm-export/api/runs", params={"days": 0}).status_code == 422
    # The local run's database user sees every session, so the page has no late-rows warning to show.
    assert call(airflow, "GET", "/crm-export/api/late-rows").json() == {"warning": None}


def test_pause_switch_and_reexport_need_airflow_permissions(airflow):
    assert call(airflow, "GET", "/crm-export/api/streams", user="viewer").status_code == 200
    refused = call(airflow, "PUT", "/crm-export/api/pause-on-error", user="viewer", json={"pause_on_error": False})
    assert refused.status_code == 403
    assert "does not allow you" in refused.json()["detail"]
    assert variable(airflow) == "true"
    assert call(airflow, "POST", "/crm-export/api/reexport", user="viewer", json={}).status_code == 403

    changed = call(airflow, "PUT", "/crm-export/api/pause-on-error", json={"pause_on_error": False})
    assert changed.json() == {
        "variable": "crm_export_pause_on_error",
        "value": "false",
        "pause_on_error": False,
        "changed_by": "admin",
    }
    assert variable(airflow) == "false"  # the same Variable Admin > Variables shows and the DAGs read
    call(airflow, "PUT", "/crm-export/api/pause-on-error", json={"pause_on_error": True})
    assert variable(airflow) == "true"

    triggered = call(airflow, "POST", "/crm-export/api/reexport", json={"stream": "contacts"}).json()
    run = call(airflow, "GET", f"/api/v2/dags/CRMExport_ExportError/dagRuns/{triggered['dag_run_id']}").json()
    assert run["conf"] == {"streams": ["contacts"]}
    assert "is paused" in triggered["note"]
    assert call(airflow, "POST", "/crm-export/api/reexport", json={"stream": "leads"}).status_code == 400


READS = (
    "/crm-export/",
    "/crm-export/api/streams",
    "/crm-export/api/runs",
    "/crm-export/api/late-rows",
    "/crm-export/api/error-counts",
    "/crm-export/api/errors",
)
WRITES = (
    ("PUT", "/crm-export/api/pause-on-error", {"pause_on_error": False}),
    ("POST", "/crm-export/api/streams/subscriptions/reposition", {"confirm": True}),
    ("POST", "/crm-export/api/reexport", {}),
)


@pytest.mark.parametrize(
    ("user", "expected"), [("admin", 200), ("viewer", 200), ("exporter", 200), ("nobody", 403), ("outsider", 403)]
)
def test_every_read_is_authorized_as_airflow_authorizes_the_dag(airflow, user, expected):
    wait_until_held(airflow)
    assert call(airflow, "GET", "/api/v2/dags/CRMExport", user=user).status_code == expected  # Airflow's own answer
    for path in READS:
        response = call(airflow, "GET", path, user=user, allow_redirects=False)
        assert response.status_code == expected, (path, response.text[:300])
        if expected == 403:
            assert response.json()["detail"] in (
                "Airflow does not allow you to read the DAG CRMExport.",
                "Airflow does not allow you to read runs of the DAG CRMExport.",
            )
            assert "blocked.example" not in response.text


@pytest.mark.parametrize("user", ["viewer", "exporter", "nobody", "outsider"])
def test_no_change_and_no_variable_without_airflows_permission(airflow, user):
    for method, path, body in WRITES:
        refused = call(airflow, method, path, user=user, json=body)
        assert refused.status_code == 403, (path, refused.text[:300])
        assert refused.json()["detail"].startswith("Airflow does not allow you to ")
    # Admin > Variables is closed to these users (SimpleAuthManager: Op and up); so is the page's switch.
    assert call(airflow, "GET", "/api/v2/variables/crm_export_pause_on_error", user=user).status_code == 403
    assert call(airflow, "GET", "/crm-export/api/pause-on-error", user=user).status_code == 403
    assert variable(airflow) == "true"


def test_runs_of_the_reexport_dag_are_listed_only_to_those_who_may_read_them(airflow):
    wait_until_held(airflow)
    with local_database() as conn:
        conn.execute(
            """INSERT INTO crm_export.export_runs (stream, dag_id, run_id, started_at, exported, rejected,
                                                   pause_on_error, outcome, stopped_because)
               VALUES ('contacts', 'CRMExport_ExportError', 'manual__secret-reexport', now(), 1, 0, true,
                       'success', 'caught up')"""
        )
    try:
        for user, sees in (("admin", True), ("viewer", True), ("exporter", False)):
            runs = call(airflow, "GET", "/crm-export/api/runs", user=user).json()["runs"]
            assert ("manual__secret-reexport" in {r["run_id"] for r in runs}) is sees, user
            assert any(r["dag_id"] == "CRMExport" for r in runs), user
    finally:
        with local_database() as conn:
            conn.execute("DELETE FROM crm_export.export_runs WHERE run_id = 'manual__secret-reexport'")


def test_the_page_reaches_airflow_at_its_base_url_whatever_host_a_request_names(airflow):
    proxy, elsewhere = SERVERS["proxy"], SERVERS["elsewhere"]
    proxy.seen.clear()
    forged = {"Host": f"127.0.0.1:{elsewhere.server_port}", "Authorization": f"Bearer {token(airflow, 'admin')}"}
    answer = requests.get(f"{airflow}/crm-export/api/pause-on-error", headers=forged, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["value"] == "true"  # read through the prefix: a 404 there would have read as "absent"
    assert elsewhere.seen == []  # the caller's token went nowhere else
    assert ("GET", f"{PREFIX}/api/v2/variables/crm_export_pause_on_error", True) in proxy.seen
    assert all(path.startswith(PREFIX + "/") for _, path, _ in proxy.seen)


def test_page_api_inputs_are_bounded(airflow):
    path = "/crm-export/api/streams/subscriptions/reposition"
    too_long = call(airflow, "POST", path, json={"confirm": True, "reason": "x" * 20_000})
    assert too_long.status_code == 422
    assert "2000" in too_long.text
    code = call(airflow, "POST", "/crm-export/api/reexport", json={"error_code": "A" * 10_000})
    assert code.status_code == 422
    assert call(airflow, "POST", "/crm-export/api/reexport", json={"error_code": "X'; --"}).status_code == 422
    assert call(airflow, "GET", "/crm-export/api/errors", params={"error_code": "A" * 500}).status_code == 422
    assert call(airflow, "GET", "/crm-export/api/runs", params={"stream": "s" * 5_000}).status_code == 422


def chromium():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.fail("Debian's chromium and chromium-driver are needed (make setup installs them when run as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def test_page_in_chromium_warns_before_turning_pause_off(airflow):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait_until_held(airflow)
    browser = chromium()
    try:
        browser.get(f"{airflow}/crm-export/api/streams")  # the cookie's domain
        browser.add_cookie({"name": "_token", "value": token(airflow, "admin"), "path": "/"})
        browser.get(f"{airflow}/crm-export/")
        wait = WebDriverWait(browser, 30)
        element = lambda test_id: browser.find_element(By.CSS_SELECTOR, f"[data-testid={test_id}]")  # noqa: E731
        wait.until(lambda _: element("pause-on-error-state").text == "ON")
        wait.until(lambda _: "HELD at record 137" in element("streams").text)
        assert "FIELD_CUSTOM_VALIDATION_EXCEPTION" in element("errors").text
        wait.until(lambda _: "held at 137" in element("runs").text)
        assert browser.find_elements(By.CSS_SELECTOR, "[data-testid=chart-runs] svg rect")
        assert browser.find_elements(By.CSS_SELECTOR, "[data-testid=chart-errors] svg rect")
        assert "FIELD_CUSTOM_VALIDATION_EXCEPTION" in browser.find_element(By.ID, "chart-errors-legend").text
        assert "refreshing every" in element("live").text
        from include.crm_export import __version__

        assert browser.find_element(By.CSS_SELECTOR, "footer.version").text == f"crm-export {__version__}"
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        browser.set_window_size(1400, 1500)
        browser.save_screenshot(str(SCREENSHOT))

        element("pause-on-error-toggle").click()
        dialog = element("confirm-off")
        assert dialog.get_attribute("open") == "true"
        assert "Salesforce may be left inconsistent" in dialog.text
        element("cancel-off").click()
        wait.until(lambda _: dialog.get_attribute("open") is None)
        assert variable(airflow) == "true"

        element("pause-on-error-toggle").click()
        element("confirm-off-button").click()
        wait.until(lambda _: element("pause-on-error-state").text.startswith("OFF"))
        assert variable(airflow) == "false"

        element("pause-on-error-toggle").click()  # turning it on needs no confirmation
        wait.until(lambda _: element("pause-on-error-state").text == "ON")
        assert element("confirm-off").get_attribute("open") is None
        assert variable(airflow) == "true"
    finally:
        browser.quit()


def test_the_page_refreshes_itself_and_shows_a_new_run(airflow):
    """A run triggered while the page is open appears in its run table without a reload."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait_until_held(airflow)
    browser = chromium()
    try:
        browser.get(f"{airflow}/crm-export/api/streams")
        browser.add_cookie({"name": "_token", "value": token(airflow, "admin"), "path": "/"})
        browser.get(f"{airflow}/crm-export/")
        WebDriverWait(browser, 30).until(lambda _: "held at 137" in browser.find_element(By.ID, "runs").text)
        loaded_at = browser.execute_script("return window.crmExportPageLoadedAt")

        run_id = call(airflow, "POST", "/api/v2/dags/CRMExport/dagRuns", json={"logical_date": None}).json()[
            "dag_run_id"
        ]
        link = f"a[href*='{quote(run_id, safe='')}']"
        WebDriverWait(browser, 240, poll_frequency=1).until(lambda _: browser.find_elements(By.CSS_SELECTOR, link))
        assert browser.execute_script("return window.crmExportPageLoadedAt") == loaded_at  # not reloaded
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT.with_name("crm-export-page-refreshed.png")))
    finally:
        browser.quit()


def test_the_page_is_in_airflows_navigation(airflow):
    plugins = call(airflow, "GET", "/api/v2/plugins").json()["plugins"]
    crm = next(p for p in plugins if p["name"] == "crm_export")
    assert crm["external_views"][0]["href"] == "/crm-export/"
    assert crm["fastapi_apps"][0]["url_prefix"] == "/crm-export"


def test_reposition_is_confirmed_permitted_and_recorded(airflow):
    path = "/crm-export/api/streams/subscriptions/reposition"
    assert call(airflow, "POST", path, user="viewer", json={"confirm": True}).status_code == 403
    unconfirmed = call(airflow, "POST", path, json={})
    assert unconfirmed.status_code == 400
    assert "confirm" in unconfirmed.json()["detail"]
    assert call(airflow, "POST", "/crm-export/api/streams/leads/reposition", json={"confirm": True}).status_code == 404

    for _ in range(30):  # a scheduled run may hold the stream for a moment
        done = call(airflow, "POST", path, json={"confirm": True, "reason": "mapping changed"})
        if done.status_code != 409:
            break
        time.sleep(1)
    assert done.status_code == 200, done.text
    assert done.json()["by"] == "ui:admin"
    assert done.json()["new_position"] is None
    streams = {s["stream"]: s for s in call(airflow, "GET", "/crm-export/api/streams").json()}
    assert streams["subscriptions"]["watermark"] is None


def test_re_positioning_a_stream_whose_table_is_missing_says_so(airflow):
    """Last in this module: it takes the subscriptions table away for a moment."""
    with local_database() as conn:
        conn.execute("ALTER TABLE crm.subscriptions RENAME TO subscriptions_away")
    try:
        path = "/crm-export/api/streams/subscriptions/reposition"
        answer = call(airflow, "POST", path, json={"confirm": True})
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"] == (
            "Stream config error in stream 'subscriptions', field 'source': table or view crm.subscriptions does not "
            "exist in the crm_export_postgres database (or this user cannot see it)."
        )
    finally:
        with local_database() as conn:
            conn.execute("ALTER TABLE crm.subscriptions_away RENAME TO subscriptions")
