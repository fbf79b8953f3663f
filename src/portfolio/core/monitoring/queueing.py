"""A queue between the request path and a background thread, bounded in records, that never wakes
the consumer per request.

Why not ``queue.Queue``: its ``put`` notifies the consumer, which then takes the interpreter lock
from the event loop for each request (for the prediction log that handoff cost BankChurn's
``/predict`` about a third of its time in a profile, issue 33). Here a request appends to a
deque (atomic under the interpreter lock) and the consumer wakes every ``interval`` seconds, or
at once when the queue is more than half full, and takes everything queued.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class RecordQueue:
    """Items of N records each, ``limit`` records waiting at most (a batch of 1,000 weighs as 1,000
    requests); an item that does not fit is refused, counted in ``dropped`` and warned about once.
    An item is still taken when nothing waits, so a big batch is never refused for its size alone.

    Args:
        limit: Records waiting at most.
        dropped: The counter (``inc(n)``) of refused records.
        what: Names the queue in the warning.
        interval: The consumer's longest sleep, in seconds.
    """

    def __init__(self, limit: int, dropped: Any, what: str, interval: float = 0.05):
        self.limit = limit
        self.interval = interval
        self._dropped = dropped
        self._what = what
        self._warned = False
        self._pending = 0
        self._items: deque[tuple[Any, int]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.stopping = False
        # Called (once until ``woken``) when the queue passes half full: a consumer that is not
        # a thread waiting in ``take`` (the prediction log's event loop) is woken this way.
        self.on_hurry: Callable[[], Any] | None = None

    def offer(self, item: Any, records: int) -> bool:
        """Queue ``item`` of ``records`` records if it fits (the hot path); False when refused."""
        with self._lock:
            full = self._pending > 0 and self._pending + records > self.limit
            if not full:
                self._pending += records
                self._items.append((item, records))
                hurry = self._pending * 2 > self.limit
        if full:
            self._dropped.inc(records)
            if not self._warned:
                self._warned = True
                log.warning("%s queue full; records not queued (counted)", self._what)
            return False
        if hurry and not self._wake.is_set():
            self._wake.set()
            if self.on_hurry is not None:
                self.on_hurry()
        return True

    def take(self) -> list[tuple[Any, int]]:
        """The consumer: wait up to ``interval`` (less when woken), then everything queued as
        (item, records); call ``done`` with their records once handled."""
        if not self.stopping:
            self._wake.wait(self.interval)
        self._wake.clear()
        taken = []
        while self._items:
            taken.append(self._items.popleft())
        return taken

    def woken(self) -> None:
        """A consumer that does not ``take``: it is handling the queue now (wake it again when
        the queue next passes half full)."""
        self._wake.clear()

    def pop(self) -> tuple[Any, int] | None:
        """The oldest queued (item, records), or None (for a consumer that does not ``take``;
        call ``done`` with its records once handled)."""
        try:
            return self._items.popleft()
        except IndexError:
            return None

    def done(self, records: int) -> None:
        """``records`` records were handled: room for as many."""
        with self._lock:
            self._pending -= records

    def stop(self) -> None:
        """Ask the consumer to finish: ``take`` no longer waits; it stops once ``empty``."""
        self.stopping = True
        self._wake.set()

    def empty(self) -> bool:
        return not self._items
