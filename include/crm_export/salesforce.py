"""Salesforce edge: the client built from the ``salesforce_default`` connection.

Everything goes through the provider's ``SalesforceHook`` and
simple-salesforce, exactly as against a real org. The connection is read at
call time (inside a task), never at import.

Connection fields used (conn type ``salesforce``):

- a direct session: Password = access token, extra ``instance_url``;
- or any auth flow the provider's hook supports (username, password and
  security token; OAuth client credentials with ``consumer_key``,
  ``consumer_secret`` and ``domain``; JWT);
- extra ``version``: REST API version, for example ``62.0``;
- extra ``ca_bundle``: a CA bundle to trust (the emulator's, or a TLS proxy's).
"""

from __future__ import annotations

from simple_salesforce import Salesforce

from include.crm_export.http import DEFAULT_TIMEOUT, SalesforceSession

SALESFORCE_CONN_ID = "salesforce_default"


def connect(conn_id: str = SALESFORCE_CONN_ID, *, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> Salesforce:
    """A simple-salesforce client for ``conn_id``; every request it makes has ``timeout``."""
    from airflow.providers.salesforce.hooks.salesforce import SalesforceHook
    from airflow.sdk import BaseHook

    connection = BaseHook.get_connection(conn_id)
    extras = connection.extra_dejson
    session = SalesforceSession(ca_bundle=extras.get("ca_bundle"), timeout=timeout)
    # The provider's hook takes a direct session's token only as an argument;
    # we keep it in the connection's password so Airflow masks it everywhere.
    direct_session_token = connection.password if extras.get("instance_url") and not connection.login else None
    hook = SalesforceHook(salesforce_conn_id=conn_id, session_id=direct_session_token, session=session)
    return hook.get_conn()
