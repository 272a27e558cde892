"""Every call crm-export makes names it, so the org's API usage and event log files show it as ours.

"Call Options Header" (REST API Developer Guide): ``Sforce-Call-Options: client=<name>``, "supported in Bulk
API and Bulk API 2.0" too. The emulator counts the requests of each client it is named by.
"""

from __future__ import annotations

from include.crm_export import __version__
from tests.support.helpers import assert_salesforce_matches_source, contacts_stream, insert_contacts, write_streams


def test_every_request_of_both_paths_carries_the_call_options_client(db, emulator, run_dag, tmp_path):
    insert_contacts(db, 1500)
    streams = write_streams(
        tmp_path / "s.yml",
        {"contacts": contacts_stream(settle_seconds=0, bulk_threshold=1000, bulk_job_records=1000)},
    )
    assert run_dag(streams_file=streams).state == "success"  # two Bulk API 2.0 jobs
    insert_contacts(db, 10, start=1501, age="1 minute")
    assert run_dag(streams_file=streams).state == "success"  # sObject Collections
    assert_salesforce_matches_source(db, emulator)

    counters = emulator.counters()
    assert counters["bulk.jobs_created"] == 2
    assert counters[f"clients.crm-export/{__version__}"] == counters["api_requests"]
    assert "clients.none" not in counters
