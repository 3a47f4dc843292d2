"""A results backend on the Django ORM: the embedded default.

Records live in :class:`~django_actors.models.StoredResult` (key, encoded
value, ``expires_at``); sets in :class:`~django_actors.models.ResultSet` and
:class:`~django_actors.models.ResultSetMember`. Expired rows are ignored by
every read and deleted by :meth:`DatabaseBackend.prune` (run now and then by
stores, and by ``manage.py prune_actors``).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from django.db import IntegrityError, connections, transaction
from django.db.models import Count

from ...brokers.database import chunked, run_with_retries
from ...encoder import Encoder
from ...message import current_millis
from ..backend import ResultBackend

#: The longest key a row holds; longer keys are shortened with a hash.
MAX_KEY_LENGTH = 255
#: Default ``poll_interval``: the slowest a cross-process wait polls (ms).
DEFAULT_POLL_INTERVAL = 100
#: How often (s) a process deletes expired rows while storing.
PRUNE_INTERVAL = 60.0


def _models() -> Any:
    from ... import models

    return models


class _Waiters:
    """Threads of this process waiting for keys, woken when a key is stored."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, set[threading.Event]] = {}

    def add(self, key: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._events.setdefault(key, set()).add(event)
        return event

    def remove(self, key: str, event: threading.Event) -> None:
        with self._lock:
            events = self._events.get(key)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[key]

    def notify(self, keys: Iterable[str]) -> None:
        with self._lock:
            if not self._events:
                return
            for key in keys:
                for event in self._events.get(key, ()):
                    event.set()


_waiters: dict[str, _Waiters] = {}
_waiters_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _waiters_lock
    _waiters.clear()
    _waiters_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _waiters_for(using: str) -> _Waiters:
    with _waiters_lock:
        found = _waiters.get(using)
        if found is None:
            found = _waiters[using] = _Waiters()
        return found


class DatabaseBackend(ResultBackend):
    """Results in tables of a Django database.

    Parameters:
      using: the Django database alias.
      namespace: prefix of every key.
      encoder: the encoder for stored values (the global one by default).
      poll_interval: the longest pause (ms) between looks of a blocking get
        waiting on a result stored by another process; waits in the storing
        process wake at once.
      use_namespace_prefix_keys: readable result keys, see :class:`ResultBackend`.
    """

    def __init__(
        self,
        *,
        using: str = "default",
        namespace: str = "django-actors-results",
        encoder: Encoder | None = None,
        poll_interval: int = DEFAULT_POLL_INTERVAL,
        use_namespace_prefix_keys: bool = False,
    ) -> None:
        if not isinstance(using, str) or not using:
            raise ValueError(f"DatabaseBackend using must be a database alias, not {using!r}.")
        if not isinstance(poll_interval, int) or isinstance(poll_interval, bool) or poll_interval < 1:
            raise ValueError(f"DatabaseBackend poll_interval must be an int >= 1 (ms), not {poll_interval!r}.")
        super().__init__(namespace=namespace, encoder=encoder, use_namespace_prefix_keys=use_namespace_prefix_keys)
        self.using = using
        self.poll_interval = poll_interval
        self._next_prune = time.monotonic() + PRUNE_INTERVAL

    def __repr__(self) -> str:
        return f"<DatabaseBackend using={self.using!r} namespace={self.namespace!r}>"

    # Helpers ---------------------------------------------------------------------

    @staticmethod
    def db_key(key: str) -> str:
        """The key as stored: keys over 255 characters keep a prefix and a hash."""
        if len(key) <= MAX_KEY_LENGTH:
            return key
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return f"{key[: MAX_KEY_LENGTH - len(digest) - 1]}#{digest}"

    def _run(self, operation: Any, *, write: bool = True) -> Any:
        return run_with_retries(self.using, operation, write=write)

    def _decode(self, value: Any) -> Any:
        return self.encoder.decode(bytes(value))["v"]

    def _encode(self, value: Any) -> bytes:
        return self.encoder.encode({"v": value})

    def _upsert(self, model: Any, objects: list[Any], update_fields: list[str], unique_field: str) -> None:
        """Insert rows, overwriting ``update_fields`` of existing ones. Call in a transaction."""
        manager = model.objects.using(self.using)
        features = connections[self.using].features
        if features.supports_update_conflicts:
            options: dict[str, Any] = {"update_conflicts": True, "update_fields": update_fields}
            if features.supports_update_conflicts_with_target:
                options["unique_fields"] = [unique_field]
            for chunk in chunked(objects):
                manager.bulk_create(chunk, **options)
            return
        for obj in objects:  # no upsert: update, else insert (else a racer inserted: update)
            values = {field: getattr(obj, field) for field in update_fields}
            lookup = {unique_field: getattr(obj, unique_field)}
            if manager.filter(**lookup).update(**values):
                continue
            try:
                with transaction.atomic(using=self.using):
                    obj.save(using=self.using, force_insert=True)
            except IntegrityError:
                manager.filter(**lookup).update(**values)

    def _store_encoded(self, encoded: Mapping[str, bytes], expires_at: int) -> None:
        StoredResult = _models().StoredResult  # noqa: N806
        rows = [StoredResult(key=key, value=data, expires_at=expires_at) for key, data in encoded.items()]
        self._upsert(StoredResult, rows, ["value", "expires_at"], "key")

    def _after_store(self, keys: list[str]) -> None:
        waiters = _waiters_for(self.using)
        transaction.on_commit(lambda: waiters.notify(keys), using=self.using)
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_INTERVAL
            if not connections[self.using].in_atomic_block:
                self.prune()

    # Primitives --------------------------------------------------------------------

    def _get_many(self, keys: list[str]) -> list[Any]:
        StoredResult = _models().StoredResult  # noqa: N806
        mapped = [self.db_key(key) for key in keys]
        if not mapped:
            return []
        now = current_millis()
        found: dict[str, Any] = {}

        def read() -> None:
            for chunk in chunked(sorted(set(mapped))):
                found.update(
                    StoredResult.objects.using(self.using)
                    .filter(key__in=chunk, expires_at__gt=now)
                    .values_list("key", "value")
                )

        self._run(read, write=False)
        return [self._decode(found[key]) if key in found else None for key in mapped]

    def _store_many(self, records: Mapping[str, Any], ttl: int) -> None:
        encoded = {self.db_key(key): self._encode(value) for key, value in records.items()}
        if not encoded:
            return

        def store() -> None:
            with transaction.atomic(using=self.using):
                self._store_encoded(encoded, current_millis() + ttl)

        self._run(store)
        self._after_store(list(encoded))

    def _wait(self, key: str, timeout: int) -> Any:
        """Poll with backoff (2 ms doubling up to ``poll_interval``); a store in
        this process wakes the wait at once."""
        deadline = time.monotonic() + timeout / 1000
        waiters = _waiters_for(self.using)
        event = waiters.add(self.db_key(key))
        try:
            pause = 0.002
            while True:
                event.clear()
                record = self._get(key)
                if record is not None:
                    return record
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if not event.wait(min(pause, remaining)):
                    pause = min(pause * 2, self.poll_interval / 1000)
        finally:
            waiters.remove(self.db_key(key), event)

    def _add_member(
        self, set_key: str, member: int, ttl: int, records: Mapping[str, Any] | None = None
    ) -> tuple[bool, int]:
        models = _models()
        key = self.db_key(set_key)
        encoded = {self.db_key(k): self._encode(v) for k, v in (records or {}).items()}

        def add() -> tuple[bool, int]:
            now = current_millis()
            expires_at = now + ttl
            sets = models.ResultSet.objects.using(self.using)
            members = models.ResultSetMember.objects.using(self.using)
            with transaction.atomic(using=self.using):
                # Writes first: on SQLite the transaction takes the write lock
                # at once (no read-to-write upgrade that could fail).
                if encoded:
                    self._store_encoded(encoded, expires_at)
                if sets.filter(key=key, expires_at__lte=now).delete()[0]:
                    members.filter(set_key=key).delete()  # an expired set starts afresh
                # Upserting the header locks it: concurrent adds to this set queue
                # here, so each counts the members added before it.
                header = models.ResultSet(key=key, expires_at=expires_at)
                self._upsert(models.ResultSet, [header], ["expires_at"], "key")
                added = not members.filter(set_key=key, member=member).exists()
                if added:
                    members.create(set_key=key, member=member)
                size = members.filter(set_key=key).count()
            return added, int(size)

        result: tuple[bool, int] = self._run(add)
        if encoded:
            self._after_store(list(encoded))
        return result

    def _count_members(self, set_keys: list[str]) -> list[int]:
        models = _models()
        mapped = [self.db_key(key) for key in set_keys]
        if not mapped:
            return []
        now = current_millis()
        counts: dict[str, int] = {}

        def count() -> None:
            for chunk in chunked(sorted(set(mapped))):
                alive = models.ResultSet.objects.using(self.using).filter(key__in=chunk, expires_at__gt=now)
                counts.update(
                    models.ResultSetMember.objects.using(self.using)
                    .filter(set_key__in=alive.values("key"))
                    .values("set_key")
                    .annotate(size=Count("id"))
                    .order_by()
                    .values_list("set_key", "size")
                )

        self._run(count, write=False)
        return [int(counts.get(key, 0)) for key in mapped]

    def _claim(self, key: str, token: str, ttl: int) -> bool:
        StoredResult = _models().StoredResult  # noqa: N806
        db_key = self.db_key(key)
        data = self._encode(token)

        def claim() -> Any:
            now = current_millis()
            rows = StoredResult.objects.using(self.using)
            with transaction.atomic(using=self.using):
                rows.filter(key=db_key, expires_at__lte=now).delete()  # an expired claim is no claim
                rows.bulk_create([StoredResult(key=db_key, value=data, expires_at=now + ttl)], ignore_conflicts=True)
                return rows.filter(key=db_key).values_list("value", flat=True).first()

        current = self._run(claim)
        return current is not None and self._decode(current) == token

    def _delete_many(self, keys: Iterable[str]) -> None:
        models = _models()
        mapped = sorted({self.db_key(key) for key in keys})

        def delete() -> None:
            with transaction.atomic(using=self.using):
                for chunk in chunked(mapped):
                    models.StoredResult.objects.using(self.using).filter(key__in=chunk).delete()
                    models.ResultSetMember.objects.using(self.using).filter(set_key__in=chunk).delete()
                    models.ResultSet.objects.using(self.using).filter(key__in=chunk).delete()

        if mapped:
            self._run(delete)

    def flush(self) -> None:
        """Delete every record, set and member under this backend's namespace."""
        models = _models()
        prefix = f"{self.namespace}:"

        def delete() -> None:
            with transaction.atomic(using=self.using):
                models.StoredResult.objects.using(self.using).filter(key__startswith=prefix).delete()
                models.ResultSetMember.objects.using(self.using).filter(set_key__startswith=prefix).delete()
                models.ResultSet.objects.using(self.using).filter(key__startswith=prefix).delete()

        self._run(delete)

    def prune(self) -> dict[str, int]:
        """Delete expired records and sets (of every namespace); return counts."""
        models = _models()

        def delete() -> dict[str, int]:
            now = current_millis()
            with transaction.atomic(using=self.using):
                results = models.StoredResult.objects.using(self.using).filter(expires_at__lte=now).delete()[0]
                expired = models.ResultSet.objects.using(self.using).filter(expires_at__lte=now)
                members = models.ResultSetMember.objects.using(self.using).filter(
                    set_key__in=expired.values("key")
                ).delete()[0]
                sets = expired.delete()[0]
            return {"results": results, "sets": sets, "members": members}

        counts: dict[str, int] = self._run(delete)
        return counts

    def close(self) -> None:
        """Close this thread's connection (outside a transaction)."""
        connection = connections[self.using]
        if not connection.in_atomic_block:
            connection.close()
