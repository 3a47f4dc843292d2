"""An in-memory rate limiter backend for tests and single-process use."""

from __future__ import annotations

import threading
import time
from collections import deque

from ..backend import RateLimiterBackend


def _now() -> float:
    return time.monotonic()


class StubBackend(RateLimiterBackend):
    """Rate limiter state kept in this process's memory, with TTLs.

    Thread-safe; :meth:`wait` blocks on a condition variable (no polling).
    Fixed buckets are aligned on the wall clock like the Redis backend's;
    every other duration is measured on the monotonic clock.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._values: dict[str, tuple[int, float]] = {}
        self._sets: dict[str, tuple[set[str], float]] = {}
        self._events: dict[str, tuple[int, float]] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._windows: dict[str, deque[float]] = {}
        self._buckets: dict[str, tuple[int, int]] = {}

    def _value(self, key: str, now: float) -> int | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._values[key]
            return None
        return entry[0]

    def add(self, key: str, value: int, ttl: int) -> bool:
        with self._changed:
            now = _now()
            if self._value(key, now) is not None:
                return False
            self._values[key] = (value, now + ttl / 1000)
            return True

    def get(self, key: str) -> int | None:
        with self._changed:
            return self._value(key, _now())

    def _members(self, key: str, now: float) -> set[str] | None:
        entry = self._sets.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._sets[key]
            return None
        return entry[0]

    def add_member(self, key: str, member: str, ttl: int) -> int:
        with self._changed:
            now = _now()
            members = self._members(key, now)
            if members is None:
                members = set()
                self._sets[key] = (members, now + ttl / 1000)
            members.add(member)
            return len(members)

    def count_members(self, key: str) -> int:
        with self._changed:
            members = self._members(key, _now())
            return 0 if members is None else len(members)

    def notify(self, key: str, count: int, ttl: int) -> None:
        if count <= 0:
            return
        with self._changed:
            now = _now()
            pending, expires = self._events.get(key, (0, 0.0))
            if expires <= now:
                pending = 0
            self._events[key] = (pending + count, now + ttl / 1000)
            self._changed.notify_all()

    def wait(self, key: str, timeout: int) -> bool:
        deadline = _now() + max(timeout, 0) / 1000
        with self._changed:
            while True:
                now = _now()
                pending, expires = self._events.get(key, (0, 0.0))
                if pending > 0 and expires > now:
                    if pending == 1:
                        del self._events[key]
                    else:
                        self._events[key] = (pending - 1, expires)
                    return True
                if now >= deadline:
                    return False
                self._changed.wait(deadline - now)

    def acquire_lease(self, key: str, holder: str, limit: int, ttl: int) -> bool:
        with self._changed:
            now = _now()
            leases = self._leases.setdefault(key, {})
            for expired in [h for h, expires in leases.items() if expires <= now]:
                del leases[expired]
            if len(leases) >= limit:
                return False
            leases[holder] = now + ttl / 1000
            return True

    def release_lease(self, key: str, holder: str) -> None:
        with self._changed:
            leases = self._leases.get(key)
            if leases is not None:
                leases.pop(holder, None)
                if not leases:
                    del self._leases[key]

    def add_to_window(self, key: str, event: str, limit: int, window: int) -> bool:
        with self._changed:
            now = _now()
            events = self._windows.setdefault(key, deque())
            horizon = now - window / 1000
            while events and events[0] <= horizon:
                events.popleft()
            if len(events) >= limit:
                return False
            events.append(now)
            return True

    def incr_bucket(self, key: str, limit: int, bucket: int) -> bool:
        with self._changed:
            index = int(time.time() * 1000) // bucket
            current, count = self._buckets.get(key, (index, 0))
            if current != index:
                count = 0
            if count >= limit:
                return False
            self._buckets[key] = (index, count + 1)
            return True

    def flush(self) -> None:
        with self._changed:
            self._values.clear()
            self._sets.clear()
            self._events.clear()
            self._leases.clear()
            self._windows.clear()
            self._buckets.clear()
