"""Adds the "CRM Export" page to the Airflow UI (navigation bar), served by the API server.

Where each stream stands, its ExportErrors, and the pause switch with its
warning. The app lives in include/crm_export/ui; see its docstring for auth.
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from include.crm_export.ui.app import app


class CrmExportPlugin(AirflowPlugin):
    name = "crm_export"
    # Class attributes, as Airflow's plugin manager reads them (AirflowPlugin declares them on instances).
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [  # type: ignore[misc]
        {"app": app, "url_prefix": "/crm-export", "name": "CRM Export"}
    ]
    external_views: ClassVar[list[dict[str, Any]]] = [  # type: ignore[misc]
        {
            "name": "CRM Export",
            "href": "/crm-export/",
            "destination": "nav",
            "category": "browse",
            "url_route": "crm-export",
        }
    ]
