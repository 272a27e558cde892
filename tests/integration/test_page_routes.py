"""The CRM Export page's routes: each declares the Airflow permission it needs, and links and the REST API
target come from Airflow's configuration, never from a request."""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute

from include.crm_export.ui import app as page_app


def test_every_route_declares_the_permission_it_needs():
    """Deny by default: a route added without ``@needs`` fails here (and is refused at run time)."""
    routes = page_app.app.routes
    # Only FastAPI routes run the app's dependencies: a plain Starlette route or a mount would skip the check.
    assert all(isinstance(route, APIRoute) for route in routes), [type(route).__name__ for route in routes]
    assert len(routes) >= 10
    undeclared = [route.path for route in routes if page_app.declared_access(route.endpoint) is None]
    assert undeclared == []
    assert any(dep.dependency is page_app._authorize for dep in page_app.app.router.dependencies)


def test_reads_need_the_export_dag_and_changes_need_its_runs_or_the_variable():
    needed = {
        (sorted(route.methods)[0], route.path): page_app.declared_access(route.endpoint).needs
        for route in page_app.app.routes
        if isinstance(route, APIRoute)
    }
    assert needed == {
        ("GET", "/"): "read the DAG CRMExport",
        ("GET", "/api/streams"): "read the DAG CRMExport",
        ("GET", "/api/capture-slots"): "read the DAG CRMExport",
        ("GET", "/api/runs"): "read runs of the DAG CRMExport",
        ("GET", "/api/late-rows"): "read the DAG CRMExport",
        ("GET", "/api/error-counts"): "read the DAG CRMExport",
        ("GET", "/api/errors"): "read the DAG CRMExport",
        ("GET", "/api/pause-on-error"): "read the Variable crm_export_pause_on_error",
        ("PUT", "/api/pause-on-error"): "change the Variable crm_export_pause_on_error",
        ("POST", "/api/streams/{stream_name}/reposition"): "change runs of the DAG CRMExport",
        ("POST", "/api/reexport"): "change runs of the DAG CRMExport_ExportError",
    }


@pytest.mark.parametrize(
    ("base_url", "expected_api", "expected_link"),
    [
        ("https://airflow.example.com/", "https://airflow.example.com", "/dags/D/runs/a%23b%3Fc%2Fd%20e/tasks/t"),
        (
            "https://corp.example.com/tools/airflow",
            "https://corp.example.com/tools/airflow",
            "/tools/airflow/dags/D/runs/a%23b%3Fc%2Fd%20e/tasks/t",
        ),
        ("", "http://127.0.0.1:8793", "/dags/D/runs/a%23b%3Fc%2Fd%20e/tasks/t"),
    ],
)
def test_airflow_is_reached_and_linked_at_its_configured_url(monkeypatch, base_url, expected_api, expected_link):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", base_url)
    monkeypatch.setenv("AIRFLOW__API__PORT", "8793")
    monkeypatch.setenv("AIRFLOW__API__HOST", "0.0.0.0")
    assert page_app.airflow_base_url() == expected_api
    assert page_app.airflow_link("dags", "D", "runs", "a#b?c/d e", "tasks", "t") == expected_link
