"""The client built from a Salesforce connection (``salesforce_default``), and the writers on it.

Everything goes through the provider's ``SalesforceHook`` and
simple-salesforce, exactly as against a real org. The connection is read at
call time (inside a task), never at import.

Connection fields used (conn type ``salesforce``):

- a direct session: Password = access token, extra ``instance_url``;
- or any auth flow the provider's hook supports (username, password and
  security token; OAuth client credentials with ``consumer_key``,
  ``consumer_secret`` and ``domain``; JWT);
- extra ``version``: REST API version, for example ``62.0``;
- extra ``timeout``: seconds to wait for a Salesforce answer (default 120);
- extra ``ca_bundle``: a CA bundle to trust (the emulator's, or a TLS proxy's);
- extras ``oauth_client_id``, ``oauth_client_secret`` (and optionally
  ``token_url``): renew an expired direct session with the OAuth client
  credentials flow.
"""

from __future__ import annotations

from typing import Any

from simple_salesforce import Salesforce

from include.crm_export.config import Stream
from include.crm_export.http import DEFAULT_TIMEOUT, SalesforceSession
from include.crm_export.names import SALESFORCE_CONN_ID
from include.crm_export.salesforce.bulk import BulkJobs
from include.crm_export.salesforce.collections import CollectionWriter, Trace
from include.crm_export.salesforce.describe import check_stream_against_describe
from include.crm_export.salesforce.session import renewer_for


def connect(conn_id: str = SALESFORCE_CONN_ID, *, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> Salesforce:
    """A simple-salesforce client for ``conn_id``; every request it makes has ``timeout``."""
    from airflow.sdk import BaseHook

    return _client(BaseHook.get_connection(conn_id), timeout=timeout)


def _client(connection: Any, *, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> Salesforce:
    from airflow.providers.salesforce.hooks.salesforce import SalesforceHook

    extras = connection.extra_dejson
    if extras.get("timeout"):
        timeout = (timeout[0], float(extras["timeout"]))
    session = SalesforceSession(ca_bundle=extras.get("ca_bundle"), timeout=timeout)
    # The provider's hook takes a direct session's token only as an argument;
    # we keep it in the connection's password so Airflow masks it everywhere.
    direct_session_token = connection.password if extras.get("instance_url") and not connection.login else None
    hook = SalesforceHook(salesforce_conn_id=connection.conn_id, session_id=direct_session_token, session=session)
    return hook.get_conn()


def writer_for(stream: Stream, *, trace: Trace | None = None) -> CollectionWriter:
    """The writer a task (and the CLI) uses for ``stream``: on the stream's connection, session renewal wired,
    mapping checked, and the org it reaches known (``writer.org_id``)."""
    from airflow.sdk import BaseHook

    connection = BaseHook.get_connection(stream.connection)
    sf = _client(connection)
    if not stream.assignment_rules:  # "Assignment Rule Header" (REST API): owners set by the source stick
        sf.session.headers["Sforce-Auto-Assign"] = "FALSE"
    renewer = renewer_for(connection.extra_dejson, sf.session)  # type: ignore[arg-type]  # a SalesforceSession (_client)
    described = check_stream_against_describe(sf, stream, renewer=renewer)
    writer = CollectionWriter(
        sf,
        sobject=stream.sobject,
        external_id_field=stream.external_id_field,
        renewer=renewer,
        trace=trace,
        stream=stream,
    )
    writer.external_id_case_sensitive = described.external_id_case_sensitive
    writer.external_id_numeric = described.external_id_numeric
    writer.field_types = described.field_types
    writer.org_id = described.org_id
    return writer


def bulk_jobs_for(stream: Stream, writer: CollectionWriter) -> BulkJobs:
    """Bulk API 2.0 jobs on the writer's connection (the backfill path)."""
    return BulkJobs(
        writer.sf,
        sobject=stream.sobject,
        external_id_field=stream.external_id_field,
        renewer=writer.renewer,
        case_sensitive=writer.external_id_case_sensitive,
        assignment_rules=stream.assignment_rules,
    )
