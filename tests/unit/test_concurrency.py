"""The in-flight level: additive increase, multiplicative decrease, once per round of answers."""

from __future__ import annotations

from include.crm_export.concurrency import Concurrency
from include.crm_export.names import MAX_IN_FLIGHT


def test_starts_at_the_streams_setting_and_never_above_the_orgs_cap():
    assert Concurrency(8, slow_seconds=10).allowed == 8
    assert Concurrency(100, slow_seconds=10).allowed == MAX_IN_FLIGHT
    assert Concurrency(0, slow_seconds=10).allowed == 1


def test_trouble_halves_once_per_round_then_recovers_gradually():
    level = Concurrency(8, slow_seconds=10)
    level.trouble("HTTP 503 SERVER_UNAVAILABLE")
    assert level.allowed == 4
    for _ in range(8):  # the rest of the storm: the 8 requests in flight when it backed off answer
        level.trouble("HTTP 503 SERVER_UNAVAILABLE")
        level.answered(0.2)
    assert level.backoffs["HTTP 503 SERVER_UNAVAILABLE"] == 1
    level.trouble("HTTP 503 SERVER_UNAVAILABLE")  # a new round: halves again
    assert level.backoffs["HTTP 503 SERVER_UNAVAILABLE"] == 2
    assert level.allowed < 4
    answers = 0
    while level.allowed < 8:
        level.answered(0.2, records=200)
        answers += 1
    assert 10 < answers < 60  # about one more per round of answers: gradual, not a jump
    assert level.lowest <= 3


def test_never_below_one():
    level = Concurrency(2, slow_seconds=10)
    for _ in range(5):
        level.trouble("x")
        level._answers_to_wait = 0  # as if every request of the round had answered
    assert (level.allowed, level.lowest, level.backoffs["x"]) == (1, 1, 5)


def test_slow_requests_and_lock_storms_back_off_a_few_lock_errors_do_not():
    slow = Concurrency(8, slow_seconds=10)
    slow.answered(12.0, records=200)
    assert (slow.allowed, dict(slow.backoffs)) == (4, {"slower than 10s": 1})

    locks = Concurrency(8, slow_seconds=10)
    locks.answered(0.3, records=200, lock_errors=3)
    assert locks.allowed == 8
    locks.answered(0.3, records=200, lock_errors=40)
    assert (locks.allowed, dict(locks.backoffs)) == (4, {"UNABLE_TO_LOCK_ROW": 1})


def test_describe_says_the_level_it_ran_at():
    level = Concurrency(8, slow_seconds=10)
    for _ in range(4):
        level.sent()
    level.trouble("HTTP 503 SERVER_UNAVAILABLE")
    for _ in range(4):
        level.sent()
    assert level.average == 6.0
    assert level.describe() == (
        "in flight: up to 8, 6.0 on average, backed off (HTTP 503 SERVER_UNAVAILABLE 1x) to as low as 4"
    )
