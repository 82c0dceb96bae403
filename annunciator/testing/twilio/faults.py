"""Fault injection for the Twilio emulator: 429 with Retry-After, 5xx, and held responses.

Why in the emulator rather than in a mock of the client: retries, backoff and "exactly as many
sent as the records say" only mean something when the real client library sees a real HTTP
answer (or none). A faulted request creates nothing, as a real 429/500 from Twilio creates nothing.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Fault", "Faults"]

# How long a "timeout" fault holds the response by default: longer than any sane client timeout
# in a test (make_client uses 5 s), short enough that the emulator's own shutdown is not delayed
# much when a test forgets to set a shorter client timeout.
DEFAULT_HOLD = 10.0


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault. ``kind`` is an HTTP status (429, 500, 503, ...) or ``"timeout"``."""

    kind: int | str
    retry_after: float | None = None
    hold: float = DEFAULT_HOLD
    on: str | None = None  # only requests whose "METHOD /path" contains this text

    @property
    def name(self) -> str:
        return str(self.kind)

    def matches(self, method: str, path: str) -> bool:
        return self.on is None or self.on in f"{method} {path}"


class Faults:
    """Faults for upcoming REST requests, set from any thread while the emulator runs.

    ``next()`` queues faults answered in order, one per matching request; ``ratio()`` adds a
    seeded random share of faults on top. Authentication is checked first, as on Twilio.

    >>> tw.faults.next(429, retry_after=2).next(500)      # the next two requests fail
    >>> tw.faults.next("timeout", hold=1.0, on="Messages")  # hold one Messages request for 1 s
    >>> tw.faults.ratio(0.3, seed=7)                      # ~30 % of requests: 429/500/timeout
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Fault] = deque()
        self._ratio = 0.0
        self._rng = random.Random()
        self._mix: tuple[Fault, ...] = ()

    def next(self, kind: int | str, *, retry_after: float | None = None, hold: float = DEFAULT_HOLD,
             on: str | None = None, times: int = 1) -> Faults:
        """Queue ``times`` faults of ``kind`` for the next matching requests; returns self to chain."""
        fault = _make(kind, retry_after, hold, on)
        with self._lock:
            self._queue.extend([fault] * times)
        return self

    def ratio(self, ratio: float, *, seed: int | None = None, kinds: Sequence[int | str] = (429, 500, "timeout"),
              retry_after: float = 1.0, hold: float = DEFAULT_HOLD, on: str | None = None) -> Faults:
        """Fail a random ``ratio`` (0..1) of matching requests with one of ``kinds``, reproducibly with ``seed``."""
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be within 0..1, got {ratio}")
        mix = tuple(_make(k, retry_after if k == 429 else None, hold, on) for k in kinds)
        with self._lock:
            self._ratio = ratio
            self._rng = random.Random(seed)
            self._mix = mix
        return self

    def clear(self) -> None:
        """No more faults: empty the queue and set the ratio to 0."""
        with self._lock:
            self._queue.clear()
            self._ratio = 0.0
            self._mix = ()

    @property
    def pending(self) -> int:
        """How many queued faults have not been used yet."""
        with self._lock:
            return len(self._queue)

    def take(self, method: str, path: str) -> Fault | None:
        """The fault for this request, if any (called by the emulator once per request)."""
        with self._lock:
            for i, fault in enumerate(self._queue):
                if fault.matches(method, path):
                    del self._queue[i]
                    return fault
            if self._ratio and self._mix and self._rng.random() < self._ratio:
                fault = self._rng.choice(self._mix)
                if fault.matches(method, path):
                    return fault
        return None


def _make(kind: int | str, retry_after: float | None, hold: float, on: str | None) -> Fault:
    if kind != "timeout" and not (isinstance(kind, int) and 400 <= kind <= 599):
        raise ValueError(f"fault kind must be an HTTP error status or 'timeout', got {kind!r}")
    return Fault(kind=kind, retry_after=retry_after, hold=hold, on=on)
