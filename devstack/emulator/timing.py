"""How long the emulated org takes to answer, so throughput can be measured at a real org's latency.

A request takes ``latency_ms`` plus ``per_record_ms`` for each record it
carries, give or take up to ``jitter_ms`` (uniformly), so concurrent requests
complete out of order. Requests are served concurrently: the wait is spent
outside the org's state, and the records are applied at a random point within
it (a real org commits somewhere during the request, not at its start).

The org also refuses new requests while too many long-running ones are going,
as Salesforce does: "Concurrent API Request Limits" in *API Request Limits and
Allocations* (Salesforce Developer Limits and Allocations Quick Reference):
requests of 20 seconds or longer are limited to 25 at once in a production org
(5 in a Developer Edition org); over it, new requests get REQUEST_LIMIT_EXCEEDED
until fewer are running. The docs do not give the message text; we use the
one real orgs answer, "ConcurrentPerOrgLongTxn Limit exceeded."
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field


@dataclass
class Timing:
    latency_ms: float = 0.0
    per_record_ms: float = 0.0
    jitter_ms: float = 0.0
    long_running_seconds: float = 20.0
    long_running_limit: int = 25
    bulk_records_per_second: float = 0.0  # how fast a Bulk API 2.0 job is processed (0: at once)
    seed: int | None = None
    _random: random.Random = field(default_factory=random.Random, repr=False)
    _running: dict[int, float] = field(default_factory=dict, repr=False)
    _next: int = 0

    def __post_init__(self) -> None:
        if self.seed is not None:
            self._random.seed(self.seed)
        for name in ("latency_ms", "per_record_ms", "jitter_ms", "long_running_seconds", "bulk_records_per_second"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "latency_ms": self.latency_ms,
            "per_record_ms": self.per_record_ms,
            "jitter_ms": self.jitter_ms,
            "long_running_seconds": self.long_running_seconds,
            "long_running_limit": self.long_running_limit,
            "bulk_records_per_second": self.bulk_records_per_second,
            "seed": self.seed,
        }

    def split(self) -> tuple[float, float]:
        """(seconds before the request's work is applied, seconds after it), for the fixed part of the delay."""
        jitter = self._random.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0
        total = max(0.0, self.latency_ms + jitter) / 1000
        before = total * self._random.random()
        return before, total - before

    def per_records(self, records: int) -> float:
        return self.per_record_ms * records / 1000

    def start(self) -> int | None:
        """Register a request; None when the long-running ones are at the limit (refuse it)."""
        now = time.monotonic()
        long_running = sum(1 for started in self._running.values() if now - started >= self.long_running_seconds)
        if long_running >= self.long_running_limit:
            return None
        self._next += 1
        self._running[self._next] = now
        return self._next

    def finish(self, ticket: int) -> None:
        self._running.pop(ticket, None)

    @property
    def in_flight(self) -> int:
        return len(self._running)
