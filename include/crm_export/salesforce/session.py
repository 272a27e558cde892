"""Renewing an expired direct session with the OAuth 2.0 client credentials flow."""

from __future__ import annotations

from typing import Any

import requests
from simple_salesforce import Salesforce

from include.crm_export.errors import SessionExpired
from include.crm_export.http import SalesforceSession


class SessionRenewer:
    """Gets a new access token with the OAuth 2.0 client credentials flow.

    Used for a direct session whose connection also carries ``token_url``,
    ``oauth_client_id`` and ``oauth_client_secret`` extras. (simple-salesforce
    renews sessions it logged in itself, never a bare access token.)
    """

    def __init__(self, token_url: str, client_id: str, client_secret: str, session: SalesforceSession) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.client_secret = client_secret
        self.session = session

    def renew(self, sf: Salesforce) -> None:
        try:
            response = self.session.post(
                self.token_url,
                data={
                    "grant_type": "client_credentials",
                    "client_id": self.client_id,
                    "client_secret": self.client_secret,
                },
            )
        except requests.RequestException as exc:
            raise SessionExpired(f"Salesforce session expired and renewing it failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise SessionExpired(
                f"Salesforce session expired and the token endpoint refused a new one "
                f"(HTTP {response.status_code}, {response.text[:200]}). Check the connection's OAuth client."
            )
        token = response.json()["access_token"]
        sf.session_id = token
        sf.headers["Authorization"] = f"Bearer {token}"


def renewer_for(extras: dict[str, Any], session: SalesforceSession) -> SessionRenewer | None:
    """A renewer when the connection's extras carry an OAuth client, else None."""
    if extras.get("oauth_client_id") and extras.get("oauth_client_secret"):
        token_url = extras.get("token_url") or f"{extras['instance_url'].rstrip('/')}/services/oauth2/token"
        return SessionRenewer(token_url, extras["oauth_client_id"], extras["oauth_client_secret"], session)
    return None
