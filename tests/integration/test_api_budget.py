"""The org's API allowance is shared: the export stays within its budget, read from Sforce-Limit-Info."""

from __future__ import annotations

from tests.support.helpers import (
    contacts_stream,
    insert_contacts,
    open_errors,
    salesforce_contacts,
    watermark,
    write_streams,
)


def test_every_response_carries_the_limit_info_header(emulator, sf):
    """REST API Developer Guide, "Limit Info Header": api-usage=used/allowed on every response."""
    emulator.set_api_usage(daily_api_requests=5000, used_elsewhere=17)
    sf.describe()
    usage = sf.api_usage["api-usage"]
    assert (usage.used, usage.total) == (18, 5000)


def test_the_run_stops_cleanly_at_the_orgs_reserve_and_the_next_one_continues(db, emulator, run_dag, tmp_path):
    insert_contacts(db, 1000)
    # One request at a time: with several in flight, the org's count in the last answer may already include a
    # request still counted as running, so the run stops a request early (on the safe side) at a count that
    # depends on timing; this test is about where the reserve stops a run, not about that.
    stream = contacts_stream(settle_seconds=0, api_reserve_percent=10, in_flight=1)
    streams = write_streams(tmp_path / "s.yml", {"contacts": stream})
    # 89,994 of 100,000 used by the org's other integrations; 10% is kept for them. The run's describe and its
    # org id query make 89,996.
    emulator.set_api_usage(daily_api_requests=100_000, used_elsewhere=89_994)

    run = run_dag(streams_file=streams)

    assert run.state == "success"
    assert "the org has used 90,000 of its 100,000 daily API requests; 10,000 are left" in run.log
    assert len(salesforce_contacts(emulator)) == 800  # four batches, then it stopped before the reserve
    assert watermark(db)[0][1] == "800"
    assert open_errors(db) == []

    emulator.set_api_usage(daily_api_requests=200_000)
    assert run_dag(streams_file=streams).state == "success"
    assert len(salesforce_contacts(emulator)) == 1000


def test_crm_exports_own_daily_budget_counts_every_run(db, emulator, run_dag, tmp_path):
    insert_contacts(db, 1000)
    tight = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0, daily_api_requests=3)})
    assert run_dag(streams_file=tight).state == "success"
    assert len(salesforce_contacts(emulator)) == 600
    again = run_dag(streams_file=tight)
    assert "crm-export has made 3 Salesforce API requests in the last 24 hours" in again.log
    assert len(salesforce_contacts(emulator)) == 600

    roomy = write_streams(tmp_path / "s2.yml", {"contacts": contacts_stream(settle_seconds=0, daily_api_requests=10)})
    assert run_dag(streams_file=roomy).state == "success"
    assert len(salesforce_contacts(emulator)) == 1000
