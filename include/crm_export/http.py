"""The HTTP session every Salesforce call goes through."""

from __future__ import annotations

from typing import Any

import requests

from include.crm_export import __version__

DEFAULT_TIMEOUT = (10.0, 120.0)  # connect, read (seconds)
CALL_OPTIONS = f"client=crm-export/{__version__}"


class SalesforceSession(requests.Session):
    """A requests session that always has a timeout and honours its CA bundle.

    requests lets ``REQUESTS_CA_BUNDLE`` in the environment override a
    session's ``verify``; a bundle configured on the connection must win, or
    the emulator's certificate (or a corporate proxy's) is not trusted.
    """

    def __init__(self, *, ca_bundle: str | None = None, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        # Our name on every call, REST and Bulk API 2.0 alike, so the org's API usage and event log files show
        # crm-export's calls as ours ("Call Options Header", REST API Developer Guide; supported in Bulk API 2.0).
        self.headers["Sforce-Call-Options"] = CALL_OPTIONS
        self.ca_bundle = ca_bundle
        self.default_timeout = timeout
        if ca_bundle:
            self.verify = ca_bundle

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        return super().request(method, url, *args, **kwargs)

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # type: ignore[no-untyped-def]
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if self.ca_bundle:
            settings["verify"] = self.ca_bundle
        return settings
