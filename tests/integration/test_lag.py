"""How far behind the source each stream is: in the closing log line and on the CRM Export page."""

from __future__ import annotations

from tests.support.helpers import contacts_stream, insert_contacts, write_streams


def test_the_closing_line_says_how_many_rows_wait_and_how_old_the_watermark_is(db, emulator, run_dag, tmp_path):
    insert_contacts(db, 500, age="2 hours")
    stream = contacts_stream(settle_seconds=0, max_records_per_run=200)
    run = run_dag(streams_file=write_streams(tmp_path / "s.yml", {"contacts": stream}))
    assert run.state == "success"
    assert "Lag: 300 source row(s) wait after the watermark; the watermark's change time is 2.0 hours old." in run.log


def test_a_large_backlog_is_estimated_and_says_so(db, emulator, run_dag, tmp_path, monkeypatch):
    from include.crm_export.db import source

    monkeypatch.setattr(source, "_LAG_EXACT_UP_TO", 100)  # counted exactly up to 100 rows, as up to 100,000 in use
    insert_contacts(db, 500)
    stream = contacts_stream(settle_seconds=0, max_records_per_run=200)
    run = run_dag(streams_file=write_streams(tmp_path / "s.yml", {"contacts": stream}))
    assert "Lag: about " in run.log
    assert "source rows (estimate) wait after the watermark" in run.log
