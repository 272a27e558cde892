"""The one interface both delivery paths fill in, and the rule they share about records in flight.

A path moves records from the source to Salesforce in named steps, the way a
Kafka Connect sink task or a Singer sink drains (``put``, ``flush``; state
moves only after what it covers is written):

1. :meth:`DeliveryPath.resume`: pick up what a killed task left (by name);
2. :meth:`DeliveryPath.read_next`: read what is next, if there is room for it;
3. :meth:`DeliveryPath.send_ready`: send what is ready;
4. :meth:`DeliveryPath.commit_answered`: commit what Salesforce answered, in
   source order (``ExportRun.commit_outcomes``, the one commit step);
5. :meth:`DeliveryPath.drop_in_flight`: after a hold or a failure, stop what
   is still in Salesforce; it counts for nothing and is sent again later.

``export_stream`` runs these steps in a loop until the path is
:meth:`DeliveryPath.finished` or the stream is held. Lookups, deletes and
change capture fit in as another operation of a path or another path, not as
new branches of the loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class DeliveryPath(Protocol):
    def resume(self) -> None: ...

    def read_next(self) -> None: ...

    def send_ready(self) -> None: ...

    def commit_answered(self) -> None: ...

    def wait(self) -> None: ...

    def finished(self) -> bool: ...

    def drop_in_flight(self, because: str, *, failed: bool = False) -> int: ...


def in_flight_already(keys: frozenset[str], in_flight: Iterable[frozenset[str]]) -> frozenset[str]:
    """The records of ``keys`` still in a request or job in Salesforce.

    A record is never in two at once: Salesforce could apply the older
    version last. What shares a record with one in flight waits for it.
    """
    shared: frozenset[str] = frozenset()
    for running in in_flight:
        shared |= keys & running
    return shared
