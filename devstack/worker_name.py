"""Airflow's ``hostname_callable`` for the multi-worker test: each worker says which one it is.

Two Celery workers on one machine share its host name; with
``AIRFLOW__CORE__HOSTNAME_CALLABLE=devstack.worker_name.hostname`` and
``CRM_EXPORT_WORKER_NAME`` set per worker, a task instance's ``hostname``
tells which worker ran it.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("CRM_EXPORT_WORKER_NAME") or socket.getfqdn()
