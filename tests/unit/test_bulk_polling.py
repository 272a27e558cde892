"""When the backfill polls a Bulk API 2.0 job: by the progress it sees, not a fixed backoff."""

from __future__ import annotations

import pytest

from include.crm_export.salesforce import next_poll

pytestmark = pytest.mark.unit


def simulate(records: int, per_second: float, starts_after: float = 0.0) -> tuple[int, float]:
    """Polls made and time the end was seen late, for a job processing ``per_second`` records."""
    now, pause, last, polls = 0.0, 0.5, None, 0
    done_at = starts_after + records / per_second
    while True:
        polls += 1
        processed = int(min(records, max(0.0, now - starts_after) * per_second))
        if now >= done_at:
            return polls, now - done_at
        seen = (now, processed)
        pause = next_poll(pause, last, seen, records=records, shortest=0.5, longest=10.0)
        last = seen
        now += pause


def test_a_job_is_polled_when_its_remaining_records_should_be_done():
    # 50,000 records at 2,000 a second: 25 s. A fixed backoff from 0.5 s by half each time (capped at 10 s)
    # takes 9 polls and sees the end up to 8 s late.
    polls, late = simulate(50_000, 2_000)
    assert polls <= 5
    assert late < 0.6


def test_before_any_progress_the_wait_grows_and_never_passes_the_longest():
    assert next_poll(0.5, None, (0.0, 0), records=100, shortest=0.5, longest=10) == 0.5
    assert next_poll(0.5, (0.0, 0), (0.5, 0), records=100, shortest=0.5, longest=10) == 0.75
    assert next_poll(8.0, (0.0, 0), (8.0, 0), records=100, shortest=0.5, longest=10) == 10
    # A slow job (10 records a second, 1,000,000 left) is polled every 10 s, not once in a day.
    assert next_poll(0.5, (0.0, 0), (1.0, 10), records=1_000_000, shortest=0.5, longest=10) == 10


def test_a_job_queued_before_it_starts_is_still_polled_soon_after_it_starts():
    polls, late = simulate(10_000, 5_000, starts_after=3.0)
    assert late < 1.0
    assert polls <= 7
