"""Salesforce edge: everything goes through the provider's ``SalesforceHook`` and simple-salesforce, as against a
real org.

- ``connection``: the client built from a Salesforce connection at call time (never at import), and the writers
  on it (:func:`writer_for`, :func:`bulk_jobs_for`);
- ``session``: renewing an expired direct session;
- ``refusals``: the one translation of a Salesforce refusal into a typed failure;
- ``describe``: the org has what a stream maps to;
- ``collections``: upserts through sObject Collections (:class:`CollectionWriter`);
- ``bulk``: Bulk API 2.0 ingest jobs (:class:`BulkJobs`).
"""

from __future__ import annotations

from include.crm_export.salesforce.bulk import BulkJobs, next_poll
from include.crm_export.salesforce.collections import CollectionWriter, Saved, Trace
from include.crm_export.salesforce.connection import bulk_jobs_for, connect, writer_for
from include.crm_export.salesforce.describe import Described, check_stream_against_describe
from include.crm_export.salesforce.refusals import refusal
from include.crm_export.salesforce.session import SessionRenewer, renewer_for

__all__ = [
    "BulkJobs",
    "CollectionWriter",
    "Described",
    "Saved",
    "SessionRenewer",
    "Trace",
    "bulk_jobs_for",
    "check_stream_against_describe",
    "connect",
    "next_poll",
    "refusal",
    "renewer_for",
    "writer_for",
]
