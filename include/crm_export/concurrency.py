"""How many sObject Collections requests a stream keeps in flight. Pure: no I/O, no clock, no threads.

Additive increase, multiplicative decrease (as TCP does): every answered
request that went well raises the level by 1/level (about one more request
per round of answers), up to the stream's ``in_flight``; trouble halves it, at
most once per round (the requests already in flight when it backed off answer
first, so one storm is not counted once per request). Trouble is a request
slower than ``slow_request_seconds``, a request Salesforce could not serve
(HTTP 5xx, too many long-running requests), or an ``UNABLE_TO_LOCK_ROW``
storm: a fifth or more of a request's records losing a lock. Never above
``MAX_IN_FLIGHT``, the org's cap on long-running requests.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from include.crm_export.names import MAX_IN_FLIGHT

LOCK_STORM_SHARE = 0.2  # a request with at least this share of its records failing on locks is a storm
LOCK_CODES = frozenset({"UNABLE_TO_LOCK_ROW"})


@dataclass
class Concurrency:
    ceiling: int
    slow_seconds: float
    level: float = 0.0
    backoffs: Counter[str] = field(default_factory=Counter)
    lowest: int = 0
    _answers_to_wait: int = 0  # answers still due from before the last back-off
    _sent: int = 0
    _level_sum: int = 0

    def __post_init__(self) -> None:
        self.ceiling = max(1, min(self.ceiling, MAX_IN_FLIGHT))
        self.level = float(self.ceiling)
        self.lowest = self.ceiling

    @property
    def allowed(self) -> int:
        """Requests that may be in flight now."""
        return max(1, int(self.level))

    def sent(self) -> None:
        """A request went out (for the average level it ran at)."""
        self._sent += 1
        self._level_sum += self.allowed

    def answered(self, seconds: float, *, records: int = 0, lock_errors: int = 0) -> None:
        """A request came back with its records' results."""
        if self._answers_to_wait:
            self._answers_to_wait -= 1
        if seconds > self.slow_seconds:
            self.trouble(f"slower than {self.slow_seconds:g}s")
        elif records and lock_errors >= LOCK_STORM_SHARE * records:
            self.trouble("UNABLE_TO_LOCK_ROW")
        else:
            self.level = min(float(self.ceiling), self.level + 1 / self.level)

    def trouble(self, reason: str) -> None:
        """Halve the level, unless it already did for requests still in flight."""
        if self._answers_to_wait:
            return
        self._answers_to_wait = self.allowed
        self.level = max(1.0, self.level / 2)
        self.lowest = min(self.lowest, self.allowed)
        self.backoffs[reason] += 1

    @property
    def average(self) -> float:
        return self._level_sum / self._sent if self._sent else float(self.ceiling)

    def describe(self) -> str:
        """For the run's closing log line."""
        text = f"in flight: up to {self.ceiling}, {self.average:.1f} on average"
        if self.backoffs:
            reasons = ", ".join(f"{reason} {n}x" for reason, n in self.backoffs.most_common())
            text += f", backed off ({reasons}) to as low as {self.lowest}"
        return text
