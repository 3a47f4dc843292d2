"""An in-memory results backend for tests and single-process use."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ..backend import ResultBackend


class StubBackend(ResultBackend):
    """Results kept in this process's memory, with TTLs. Values are encoded on
    store, exactly as a networked backend would, so encoding errors show up
    in tests too. Waiting blocks on a condition variable (no polling)."""

    blocks_without_polling = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._values: dict[str, tuple[bytes, float]] = {}
        self._sets: dict[str, tuple[set[int], float]] = {}
        self._changed = threading.Condition()

    @staticmethod
    def _expiry(ttl: int) -> float:
        return time.monotonic() + ttl / 1000

    def _read(self, key: str) -> Any:
        entry = self._values.get(key)
        if entry is None:
            return None
        data, expires = entry
        if expires <= time.monotonic():
            del self._values[key]
            return None
        return self.encoder.decode(data)["v"]

    def _get_many(self, keys: list[str]) -> list[Any]:
        with self._changed:
            return [self._read(key) for key in keys]

    def _store_many(self, records: Mapping[str, Any], ttl: int) -> None:
        encoded = {key: self.encoder.encode({"v": value}) for key, value in records.items()}
        expires = self._expiry(ttl)
        with self._changed:
            for key, data in encoded.items():
                self._values[key] = (data, expires)
            self._changed.notify_all()

    def _wait(self, key: str, timeout: int) -> Any:
        deadline = time.monotonic() + timeout / 1000
        with self._changed:
            while True:
                record = self._read(key)
                if record is not None:
                    return record
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def _add_member(
        self, set_key: str, member: int, ttl: int, records: Mapping[str, Any] | None = None
    ) -> tuple[bool, int]:
        if records:
            self._store_many(records, ttl)
        with self._changed:
            entry = self._sets.get(set_key)
            if entry is None or entry[1] <= time.monotonic():
                entry = (set(), 0.0)
            members = entry[0]
            added = member not in members
            members.add(member)
            self._sets[set_key] = (members, self._expiry(ttl))
            return added, len(members)

    def _count_members(self, set_keys: list[str]) -> list[int]:
        now = time.monotonic()
        with self._changed:
            counts = []
            for key in set_keys:
                entry = self._sets.get(key)
                counts.append(len(entry[0]) if entry and entry[1] > now else 0)
            return counts

    def _claim(self, key: str, token: str, ttl: int) -> bool:
        with self._changed:
            current = self._read(key)
            if current is None:
                self._values[key] = (self.encoder.encode({"v": token}), self._expiry(ttl))
                self._changed.notify_all()
                return True
            return bool(current == token)

    def _delete_many(self, keys: Iterable[str]) -> None:
        with self._changed:
            for key in keys:
                self._values.pop(key, None)
                self._sets.pop(key, None)

    def flush(self) -> None:
        with self._changed:
            self._values.clear()
            self._sets.clear()
