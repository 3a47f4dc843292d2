"""A broker on the Django ORM: the embedded default.

Messages are rows of :class:`~django_actors.models.QueuedMessage`. A fetch
claims rows (``state = 'claimed'``, ``claimed_by = <worker id>``) in one
statement; an ack deletes the row (or marks it done when the broker keeps a
retention); a nack marks it dead. Every consuming process keeps a
:class:`~django_actors.models.WorkerHeartbeat` row fresh from a thread; the
claims of a worker whose heartbeat lapsed are released by a reaper that
fetchers run now and then, so a SIGKILLed worker's messages come back.

Claiming:

- PostgreSQL: ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n)
  RETURNING ...``: concurrent fetchers never wait for each other. Enqueues
  ``NOTIFY`` a channel that idle fetchers ``LISTEN`` to (psycopg 3).
- SQLite: one conditional ``UPDATE ... WHERE id IN (SELECT ... LIMIT n) AND
  state = 'queued' RETURNING ...``; a statement is atomic, so a row is
  claimed once, whatever the number of worker processes. "database is
  locked" is retried with backoff. The database is switched to WAL mode
  (``journal_mode`` option) so readers do not block the writer.
- Other databases: ``select_for_update(skip_locked=True)`` where supported,
  else a conditional update followed by a read of the rows this fetch
  actually claimed.

Settling: worker threads hand acks and nacks to one settler thread per
process, which writes each batch gathered while the previous one was being
written in one statement (group commit) on its own connection, and wakes
them once it is committed. Writes to SQLite take turns inside a process;
idle fetchers look with a read before they claim with a write. Lock
conflicts are retried with backoff and lost connections reopened
(:func:`run_with_retries`); no transaction is held open while waiting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connections, transaction

from ..broker import Broker, Consumer, MessageProxy, validate_queue_name
from ..errors import ConnectionClosed, DecodeError, MessageTooLarge, QueueJoinTimeout, QueueNotFound
from ..message import Message, current_millis
from ..middleware.middleware import Middleware

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Default ``heartbeat_timeout``: a worker silent this long (ms) is presumed dead.
DEFAULT_HEARTBEAT_TIMEOUT = 60_000
#: Default ``dead_message_ttl``: how long dead letters are kept (ms), 7 days.
DEFAULT_DEAD_MESSAGE_TTL = 7 * 24 * 3600 * 1000
#: Default ``poll_interval``: how often an idle fetcher looks for work (ms).
DEFAULT_POLL_INTERVAL = 100
#: How often (s) a process deletes expired dead letters, old done rows and old heartbeats.
MAINTENANCE_INTERVAL = 60.0
#: The PostgreSQL channel enqueues notify.
NOTIFY_CHANNEL = "django_actors"
#: Rows per INSERT / ids per IN (...) list.
CHUNK = 500

_QUEUED, _CLAIMED, _DONE, _DEAD = "queued", "claimed", "done", "dead"
_JOURNAL_MODES = frozenset({"wal", "delete", "truncate", "persist", "memory", "off"})
_LOCK_SQLSTATES = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock not available


def _models() -> Any:
    # Imported lazily: this module may be imported before the app registry is ready.
    from .. import models

    return models


# Errors and retries --------------------------------------------------------------


def is_lock_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a transient lock conflict worth retrying.

    SQLite's "database is locked" / "busy", PostgreSQL's deadlock and
    serialization failures.
    """
    cause = exc.__cause__ or exc
    if (getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)) in _LOCK_SQLSTATES:
        return True
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text or "database is busy" in text


_write_locks: dict[str, threading.Lock] = {}
_write_locks_lock = threading.Lock()


def write_lock(using: str) -> threading.Lock | contextlib.nullcontext[None]:
    """A process-wide lock for writes to an SQLite database, else a no-op.

    SQLite has one writer at a time and its busy handler sleeps in growing
    steps when writers collide; taking turns in-process avoids those sleeps.
    Not taken inside a caller's transaction, which may already hold
    SQLite's write lock.
    """
    connection = connections[using]
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        return contextlib.nullcontext()
    with _write_locks_lock:
        lock = _write_locks.get(using)
        if lock is None:
            lock = _write_locks[using] = threading.Lock()
        return lock


def run_with_retries(using: str, operation: Callable[[], T], *, lock_timeout: float = 60.0, write: bool = True) -> T:
    """Run a short database operation, retrying transient failures.

    Lock conflicts are retried with jittered exponential backoff for up to
    ``lock_timeout`` seconds; a broken connection is closed and the operation
    retried twice. Inside a caller's transaction nothing is retried (the
    transaction is not ours to redo). Writes to SQLite take turns in this
    process (:func:`write_lock`).

    Raises:
      ConnectionClosed: the database stayed unreachable.
      django.db.Error: anything else, unchanged.
    """
    connection = connections[using]
    delay = 0.002
    deadline: float | None = None
    reconnects = 0
    while True:
        try:
            if not write:
                return operation()
            with write_lock(using):
                return operation()
        except (OperationalError, InterfaceError) as exc:
            if connection.in_atomic_block:
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + lock_timeout
            if is_lock_error(exc):
                if now >= deadline:
                    raise
                time.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not crypto
                delay = min(delay * 2, 0.2)
                continue
            if isinstance(exc, OperationalError) and _usable(connection):
                raise  # a statement error (missing table...), not a lost connection
            _close_quietly(connection)
            reconnects += 1
            if reconnects > 2:
                raise ConnectionClosed(f"Lost the connection to database {using!r}: {exc}") from exc
            time.sleep(delay)
            delay = min(delay * 4, 0.5)


def _usable(connection: BaseDatabaseWrapper) -> bool:
    if connection.connection is None:
        return False
    try:
        return bool(connection.is_usable())
    except Exception:
        return False


def _close_quietly(connection: BaseDatabaseWrapper) -> None:
    try:
        connection.close()
    except Exception:
        logger.debug("Closing a broken connection failed.", exc_info=True)


def chunked(values: Sequence[T], size: int = CHUNK) -> Iterable[Sequence[T]]:
    """Yield ``values`` in slices of at most ``size``."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


# In-process wake-ups ----------------------------------------------------------------


class Signal:
    """A condition with a generation counter: waiters never miss a notify
    that happened between their check and their wait."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._generation = 0

    @property
    def generation(self) -> int:
        """The number of notifies so far."""
        return self._generation

    def notify(self) -> None:
        """Wake every waiter."""
        with self._condition:
            self._generation += 1
            self._condition.notify_all()

    def wait(self, generation: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a notify after ``generation``; whether one came."""
        with self._condition:
            if self._generation != generation:
                return True
            self._condition.wait(max(timeout, 0))
            return self._generation != generation


_signals: dict[tuple[str, str], Signal] = {}
_signals_lock = threading.Lock()


def signal(using: str, name: str) -> Signal:
    """The process-wide :class:`Signal` called ``name`` for database ``using``."""
    key = (using, name)
    with _signals_lock:
        found = _signals.get(key)
        if found is None:
            found = _signals[key] = Signal()
        return found


# Dead letters -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeadLetter:
    """A dead-lettered message, as listed by :meth:`DatabaseBroker.dead_letters`
    (the same fields as the Redis broker's, plus the row's)."""

    message_id: str
    queue_name: str
    reason: str
    #: When it was dead-lettered, epoch ms.
    died_at: int
    #: The payload as it was.
    data: bytes
    #: The row id, the actor's name and how many times it was delivered.
    id: int
    actor_name: str
    deliveries: int

    @property
    def message(self) -> Message[Any] | None:
        """The decoded message, ``None`` when the payload cannot be decoded."""
        try:
            return Message.decode(self.data)
        except DecodeError:
            return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class QueueStats:
    """How many messages a queue holds, by state (as the Redis broker's ``stats``)."""

    ready: int
    delayed: int
    in_flight: int
    dead: int


# The middleware the broker adds to itself ----------------------------------------------


class CloseConnections(Middleware):
    """Close a thread's database connections when a worker or consumer thread
    ends (Django connections are per thread and would otherwise stay open).

    The database broker installs it on itself; it is harmless next to
    :class:`~django_actors.middleware.django_db.DbConnections`.
    """

    def before_worker_thread_shutdown(self, broker: Broker, thread: Any) -> None:
        connections.close_all()

    def before_consumer_thread_shutdown(self, broker: Broker, thread: Any) -> None:
        connections.close_all()


# The broker ----------------------------------------------------------------------------------


class DatabaseBroker(Broker):
    """A broker that keeps messages in a table of a Django database.

    Delivery is at least once: a message leaves the table only when acked or
    dead-lettered, and the claims of a worker whose heartbeat lapses are
    released for others to fetch.

    Parameters:
      middleware: the middleware (defaults as for every broker).
      using: the Django database alias.
      heartbeat_timeout: ms after which a silent worker's claims are released.
      dead_message_ttl: ms dead letters are kept.
      poll_interval: ms between looks of an idle fetcher (fetchers in the
        enqueuing process, and on PostgreSQL every listening fetcher, wake at once).
      retention: ms acked messages are kept (marked done) before being
        deleted; 0 deletes them at ack.
      journal_mode: the SQLite journal mode to set (``"wal"`` by default so
        readers and the writer do not block each other); ``None`` leaves it.
      listen: on PostgreSQL with psycopg 3, wake idle fetchers with
        ``LISTEN``/``NOTIFY``.
      max_message_size: bytes, checked at send and at receive.
    """

    supports_batch_enqueue = True

    def __init__(
        self,
        middleware: Iterable[Middleware] | None = None,
        *,
        using: str = "default",
        heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT,
        dead_message_ttl: int = DEFAULT_DEAD_MESSAGE_TTL,
        poll_interval: int = DEFAULT_POLL_INTERVAL,
        retention: int = 0,
        journal_mode: str | None = "wal",
        listen: bool = True,
        max_message_size: int = 4 * 1024 * 1024,
    ) -> None:
        for name, value, low in (
            ("heartbeat_timeout", heartbeat_timeout, 1),
            ("dead_message_ttl", dead_message_ttl, 0),
            ("poll_interval", poll_interval, 1),
            ("retention", retention, 0),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"DatabaseBroker {name} must be an int >= {low} (milliseconds), not {value!r}.")
        if not isinstance(using, str) or not using:
            raise ValueError(f"DatabaseBroker using must be a database alias, not {using!r}.")
        if journal_mode is not None and str(journal_mode).lower() not in _JOURNAL_MODES:
            raise ValueError(
                f"DatabaseBroker journal_mode must be one of {', '.join(sorted(_JOURNAL_MODES))} or None, "
                f"not {journal_mode!r}."
            )
        self.using = using
        self.heartbeat_timeout = heartbeat_timeout
        self.dead_message_ttl = dead_message_ttl
        self.poll_interval = poll_interval
        self.retention = retention
        self.journal_mode = journal_mode
        self.listen = listen
        self._queues: set[str] = set()
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._worker_id: str | None = None
        self._heartbeat: _HeartbeatThread | None = None
        self._settler: _SettlerThread | None = None
        self._consumers = 0
        self._next_reap = 0.0
        self._next_maintenance = 0.0
        self._prepared = False
        #: Dead letters not yet raised by a ``join(fail_fast=True)``, by queue.
        self._failures: dict[str, list[MessageProxy]] = {}
        self._unsettled: list[_Settlement] = []
        #: Force a claim strategy ("postgresql", "returning" or "generic"); tests.
        self.claim_strategy: str | None = None
        super().__init__(middleware, max_message_size=max_message_size)
        self.add_middleware(CloseConnections())

    def __repr__(self) -> str:
        return f"<DatabaseBroker using={self.using!r}>"

    # Connections ---------------------------------------------------------------------

    @property
    def connection(self) -> BaseDatabaseWrapper:
        """This thread's connection to the broker's database."""
        return connections[self.using]

    def _run(self, operation: Callable[[], T], *, write: bool = True) -> T:
        self._prepare()
        return run_with_retries(self.using, operation, write=write)

    def _prepare(self) -> None:
        """Once per process: set SQLite's journal mode."""
        if self._prepared:
            return
        connection = self.connection
        if connection.vendor != "sqlite" or not self.journal_mode:
            self._prepared = True
        elif not connection.in_atomic_block:
            self._prepared = True
            try:
                with connection.cursor() as cursor:
                    cursor.execute(f"PRAGMA journal_mode={self.journal_mode}")
            except DatabaseError as exc:  # e.g. locked by another process: not fatal
                logger.warning("Could not set SQLite journal_mode=%s: %s", self.journal_mode, exc)

    @property
    def _table(self) -> str:
        return str(self.connection.ops.quote_name(_models().QueuedMessage._meta.db_table))

    def _objects(self) -> Any:
        return _models().QueuedMessage.objects.using(self.using)

    # Queues ----------------------------------------------------------------------------

    def _declare_queue(self, queue_name: str) -> None:
        with self._lock:
            self._queues.add(queue_name)

    def get_declared_queues(self) -> set[str]:
        return set(self._queues)

    # Enqueueing --------------------------------------------------------------------------

    def _priority(self, message: Message[Any]) -> int:
        actor = self.actors.get(message.actor_name)
        return actor.priority if actor is not None else 0

    def _enqueue_many(self, items: list[tuple[Message[Any], bytes]], eta: int | None) -> None:
        QueuedMessage = _models().QueuedMessage  # noqa: N806
        queues = sorted({message.queue_name for message, _ in items})

        def insert() -> None:
            now = current_millis()
            rows = [
                QueuedMessage(
                    queue_name=message.queue_name,
                    actor_name=message.actor_name,
                    message_id=message.message_id,
                    priority=self._priority(message),
                    eta=now if eta is None else eta,
                    state=_QUEUED,
                    payload=data,
                    enqueued_at=now,
                    updated_at=now,
                )
                for message, data in items
            ]
            with transaction.atomic(using=self.using):
                for chunk in chunked(rows):
                    QueuedMessage.objects.using(self.using).bulk_create(chunk)
                self._notify_enqueued(queues)

        self._run(insert)
        transaction.on_commit(self._wake_fetchers, using=self.using)

    def _notify_enqueued(self, queues: list[str]) -> None:
        if self.listen and self.connection.vendor == "postgresql":
            with self.connection.cursor() as cursor:
                for queue_name in queues:
                    cursor.execute("SELECT pg_notify(%s, %s)", [NOTIFY_CHANNEL, queue_name])

    def _wake_fetchers(self) -> None:
        signal(self.using, "enqueued").notify()

    # Consuming -----------------------------------------------------------------------------

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> DatabaseConsumer:
        """Return a consumer for ``queue_name``; starts this process's heartbeat.

        Raises:
          QueueNotFound: the queue is not declared on this broker.
        """
        if queue_name not in self._queues:
            raise QueueNotFound(f"Queue {queue_name!r} is not declared.")
        self._start_consuming()
        return DatabaseConsumer(self, queue_name, prefetch, timeout)

    @property
    def worker_id(self) -> str:
        """This process's worker id, as written in heartbeats and claims."""
        with self._lock:
            if self._worker_id is None or self._pid != os.getpid():
                # New process (or forked): new identity, no inherited threads.
                self._pid = os.getpid()
                self._worker_id = f"{socket.gethostname()}:{self._pid}:{uuid.uuid4().hex[:12]}"
                self._heartbeat = None
                self._settler = None
                self._consumers = 0
            return self._worker_id

    def _start_consuming(self) -> None:
        worker_id = self.worker_id
        with self._lock:
            self._consumers += 1
            if self._heartbeat is not None:
                return
            # The first beat is written before any claim, so a claim never
            # belongs to a worker without a heartbeat row.
            self._run(lambda: self._beat(worker_id))
            self._heartbeat = _HeartbeatThread(self, worker_id)
            self._heartbeat.start()
            self._settler = _SettlerThread(self)
            self._settler.start()
            if self.listen and self.connection.vendor == "postgresql":
                _Listener.acquire(self.using)

    def _stop_consuming(self) -> None:
        with self._lock:
            if self._pid != os.getpid() or self._consumers <= 0:
                return
            self._consumers -= 1
            if self._consumers or self._heartbeat is None:
                return
            heartbeat, self._heartbeat = self._heartbeat, None
            settler, self._settler = self._settler, None
            worker_id = self._worker_id
        if settler is not None:
            settler.stop()
        heartbeat.stop()
        if self.listen and self.connection.vendor == "postgresql":
            _Listener.release(self.using)
        try:
            self._run(lambda: _models().WorkerHeartbeat.objects.using(self.using).filter(worker_id=worker_id).delete())
        except Exception:
            logger.exception("Could not delete the heartbeat of worker %s.", worker_id)

    def _beat(self, worker_id: str) -> None:
        WorkerHeartbeat = _models().WorkerHeartbeat  # noqa: N806
        now = current_millis()
        manager = WorkerHeartbeat.objects.using(self.using)
        if not manager.filter(worker_id=worker_id).update(last_seen=now):
            manager.create(
                worker_id=worker_id,
                hostname=socket.gethostname()[:255],
                pid=os.getpid(),
                started_at=now,
                last_seen=now,
            )

    # Claims -------------------------------------------------------------------------------------

    def _strategy(self) -> str:
        if self.claim_strategy:
            return self.claim_strategy
        connection = self.connection
        if connection.vendor == "postgresql":
            return "postgresql"
        if connection.vendor == "sqlite" and connection.features.can_return_columns_from_insert:
            return "returning"  # SQLite >= 3.35 has UPDATE ... RETURNING
        return "generic"

    _COLUMNS = ("id", "message_id", "actor_name", "priority", "eta", "payload")

    def _has_runnable(self, queue_name: str) -> bool:
        """Whether a queue has a message to run now (a read)."""
        runnable = self._objects().filter(queue_name=queue_name, state=_QUEUED, eta__lte=current_millis())
        return bool(self._run(runnable.exists, write=False))

    def _claim(self, queue_name: str, count: int) -> tuple[list[tuple[Any, ...]], bool]:
        """Claim up to ``count`` runnable messages of a queue.

        Returns the claimed rows (``_COLUMNS``), in delivery order, and
        whether another fetcher won a race for some of them.
        """
        strategy = self._strategy()
        now = current_millis()
        worker_id = self.worker_id
        token = uuid.uuid4().hex
        if strategy in ("postgresql", "returning"):
            rows = self._run(lambda: self._claim_returning(strategy, queue_name, count, now, worker_id, token))
            return sorted(rows, key=lambda row: (row[3], row[4], row[0])), False
        return self._run(lambda: self._claim_generic(queue_name, count, now, worker_id, token))

    def _claim_returning(
        self, strategy: str, queue_name: str, count: int, now: int, worker_id: str, token: str
    ) -> list[tuple[Any, ...]]:
        qn = self.connection.ops.quote_name
        table = self._table
        columns = ", ".join(f"{table}.{qn(c)}" for c in self._COLUMNS)
        assignments = (
            f"{qn('state')} = %s, {qn('claimed_by')} = %s, {qn('claim_token')} = %s, "
            f"{qn('updated_at')} = %s, {qn('deliveries')} = {table}.{qn('deliveries')} + 1"
        )
        pick = (
            f"SELECT {qn('id')} FROM {table} WHERE {qn('queue_name')} = %s AND {qn('state')} = %s "
            f"AND {qn('eta')} <= %s ORDER BY {qn('priority')}, {qn('eta')}, {qn('id')} LIMIT %s"
        )
        params: list[Any] = [_CLAIMED, worker_id, token, now, queue_name, _QUEUED, now, count]
        if strategy == "postgresql":
            sql = (
                f"UPDATE {table} SET {assignments} FROM ({pick} FOR UPDATE SKIP LOCKED) AS picked "
                f"WHERE {table}.{qn('id')} = picked.{qn('id')} RETURNING {columns}"
            )
        else:
            sql = (
                f"UPDATE {table} SET {assignments} WHERE {qn('id')} IN ({pick}) AND {qn('state')} = %s "
                f"RETURNING {columns}"
            )
            params.append(_QUEUED)
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return [tuple(row) for row in cursor.fetchall()]

    def _claim_generic(
        self, queue_name: str, count: int, now: int, worker_id: str, token: str
    ) -> tuple[list[tuple[Any, ...]], bool]:
        from django.db.models import F

        objects = self._objects()
        runnable = objects.filter(queue_name=queue_name, state=_QUEUED, eta__lte=now).order_by("priority", "eta", "id")
        claim = {
            "state": _CLAIMED,
            "claimed_by": worker_id,
            "claim_token": token,
            "updated_at": now,
            "deliveries": F("deliveries") + 1,
        }
        if self.connection.features.has_select_for_update_skip_locked:
            with transaction.atomic(using=self.using):
                rows = list(runnable.select_for_update(skip_locked=True).values_list(*self._COLUMNS)[:count])
                if rows:
                    objects.filter(id__in=[row[0] for row in rows]).update(**claim)
            return rows, False
        # A conditional update: only rows still queued are taken, then read
        # back by this fetch's token: exactly the rows this fetch claimed.
        candidates = list(runnable.values_list("id", flat=True)[:count])
        if not candidates:
            return [], False
        claimed = objects.filter(id__in=candidates, state=_QUEUED).update(**claim)
        if not claimed:
            return [], True
        rows = list(
            objects.filter(id__in=candidates, claim_token=token, state=_CLAIMED)
            .order_by("priority", "eta", "id")
            .values_list(*self._COLUMNS)
        )
        return rows, claimed < len(candidates)

    # Settling ---------------------------------------------------------------------------------------

    def _settle(self, settlement: _Settlement) -> None:
        """Ack or nack through the settler thread (batched), else directly."""
        with self._lock:
            settler = self._settler if self._pid == os.getpid() else None
        try:
            if settler is None or not settler.submit(settlement):
                self._run(lambda: self._settle_batch([settlement]))
        except Exception:
            # Kept and written again by a later fetch: while this process
            # lives its heartbeat keeps the claim, so nobody else would.
            with self._lock:
                self._unsettled.append(settlement)
            raise
        if settlement.proxy is not None:
            with self._lock:
                failures = self._failures.setdefault(settlement.proxy.queue_name, [])
                failures.append(settlement.proxy)
                del failures[:-100]
        signal(self.using, "settled").notify()

    def _settle_batch(self, batch: list[_Settlement]) -> None:
        """Apply acks and nacks in one transaction."""
        objects = self._objects()
        acked = [item.row_id for item in batch if item.proxy is None]
        now = current_millis()
        released = {"claimed_by": None, "claim_token": None, "updated_at": now}
        if len(acked) == len(batch) <= CHUNK:  # the common case: one statement, no BEGIN/COMMIT round trips
            if self.retention:
                objects.filter(id__in=acked).update(state=_DONE, **released)
            else:
                objects.filter(id__in=acked)._raw_delete(self.using)
            return
        with transaction.atomic(using=self.using):
            for chunk in chunked(acked):
                if self.retention:
                    objects.filter(id__in=chunk).update(state=_DONE, **released)
                else:
                    objects.filter(id__in=chunk).delete()
            for item in batch:
                if item.proxy is not None:
                    reason = item.proxy.fail_reason or "failed"
                    objects.filter(id=item.row_id).exclude(state=_DONE).update(state=_DEAD, reason=reason, **released)

    def _ack(self, row_id: int) -> None:
        self._settle(_Settlement(row_id))

    def _nack(self, proxy: MessageProxy) -> None:
        self._settle(_Settlement(proxy.tag, proxy))

    def _requeue(self, row_ids: list[int]) -> None:
        worker_id = self.worker_id
        for chunk in chunked(row_ids):
            self._run(
                lambda chunk=chunk: self._objects()  # type: ignore[misc]
                .filter(id__in=chunk, state=_CLAIMED, claimed_by=worker_id)
                .update(state=_QUEUED, claimed_by=None, claim_token=None, updated_at=current_millis())
            )
        self._wake_fetchers()
        signal(self.using, "settled").notify()

    # The reaper and maintenance ----------------------------------------------------------------------

    def _settle_again(self) -> None:
        """Write settlements that failed earlier (the database was unreachable)."""
        with self._lock:
            batch, self._unsettled = self._unsettled, []
        if not batch:
            return
        for item in batch:
            item.done, item.error = False, None
        try:
            self._run(lambda: self._settle_batch(batch))
        except Exception:
            with self._lock:
                self._unsettled[:0] = batch
            raise
        logger.info("Settled %d message(s) whose ack or nack had failed.", len(batch))
        signal(self.using, "settled").notify()

    def maybe_reap(self) -> None:
        """Run :meth:`reap` if it has not run in this process for half a heartbeat timeout.

        Also writes acks and nacks that failed earlier.
        """
        if self._unsettled:
            try:
                self._settle_again()
            except Exception as exc:
                logger.warning("Could not write %d earlier ack(s)/nack(s) yet: %s", len(self._unsettled), exc)
        now = time.monotonic()
        if now < self._next_reap:
            return
        self._next_reap = now + max(self.heartbeat_timeout / 2000, 0.05)
        try:
            released = self.reap()
            if released:
                logger.warning("Released %d message(s) claimed by workers whose heartbeat lapsed.", released)
            if now >= self._next_maintenance:
                self._next_maintenance = now + MAINTENANCE_INTERVAL
                self.prune()
        except Exception:
            logger.exception("The database broker's reaper failed; it will run again.")

    def reap(self) -> int:
        """Release the claims of workers whose heartbeat is older than
        ``heartbeat_timeout``; return how many messages were released."""
        WorkerHeartbeat = _models().WorkerHeartbeat  # noqa: N806
        now = current_millis()
        cutoff = now - self.heartbeat_timeout
        alive = WorkerHeartbeat.objects.using(self.using).filter(last_seen__gte=cutoff).values("worker_id")
        released: int = self._run(
            lambda: self._objects()
            .filter(state=_CLAIMED, updated_at__lt=cutoff)
            .exclude(claimed_by__in=alive)
            .update(state=_QUEUED, claimed_by=None, claim_token=None, updated_at=now)
        )
        if released:
            self._wake_fetchers()
        return released

    def prune(self, *, older_than: int | None = None, dead_letters: bool = True) -> dict[str, int]:
        """Delete finished rows by age; return counts by kind.

        Parameters:
          older_than: ms; done and dead rows finished longer ago are deleted.
            By default done rows older than ``retention`` and dead letters
            older than ``dead_message_ttl``.
          dead_letters: also delete dead letters.
        """
        WorkerHeartbeat = _models().WorkerHeartbeat  # noqa: N806
        now = current_millis()
        objects = self._objects()
        done_cutoff = now - (self.retention if older_than is None else older_than)
        dead_cutoff = now - (self.dead_message_ttl if older_than is None else older_than)
        counts = {"done": 0, "dead": 0, "workers": 0}
        counts["done"] = self._run(lambda: objects.filter(state=_DONE, updated_at__lte=done_cutoff).delete()[0])
        if dead_letters:
            counts["dead"] = self._run(lambda: objects.filter(state=_DEAD, updated_at__lt=dead_cutoff).delete()[0])
        # Heartbeats of workers long gone (their claims were released by the reaper).
        gone = now - max(10 * self.heartbeat_timeout, 3_600_000)
        counts["workers"] = self._run(
            lambda: WorkerHeartbeat.objects.using(self.using).filter(last_seen__lt=gone).delete()[0]
        )
        return counts

    # Queue-wide operations ------------------------------------------------------------------------------

    def pending_count(self, queue_name: str) -> int:
        """How many messages of a queue are queued (delayed included) or claimed."""
        pending = self._objects().filter(queue_name=queue_name, state__in=(_QUEUED, _CLAIMED))
        return int(self._run(pending.count, write=False))

    def stats(self, queue_name: str) -> QueueStats:
        """How many messages a queue holds: ready, delayed, in flight (claimed), dead."""
        from django.db.models import Count, Q

        validate_queue_name(queue_name)
        now = current_millis()
        rows = self._objects().filter(queue_name=queue_name)
        totals = self._run(
            lambda: rows.aggregate(
                ready=Count("id", filter=Q(state=_QUEUED, eta__lte=now)),
                delayed=Count("id", filter=Q(state=_QUEUED, eta__gt=now)),
                in_flight=Count("id", filter=Q(state=_CLAIMED)),
                dead=Count("id", filter=Q(state=_DEAD, updated_at__gte=now - self.dead_message_ttl)),
            ),
            write=False,
        )
        return QueueStats(**{name: int(value or 0) for name, value in totals.items()})

    def workers(self) -> dict[str, int]:
        """The worker processes with a heartbeat row, and their last heartbeat (epoch ms)."""
        beats = _models().WorkerHeartbeat.objects.using(self.using).values_list("worker_id", "last_seen")
        return dict(self._run(lambda: list(beats), write=False))

    def flush(self, queue_name: str) -> None:
        """Drop a queue's queued (delayed included) and done messages.

        Claimed messages stay until their worker settles them; dead letters stay.
        """
        validate_queue_name(queue_name)
        self._run(lambda: self._objects().filter(queue_name=queue_name, state__in=(_QUEUED, _DONE)).delete())
        signal(self.using, "settled").notify()

    def flush_all(self) -> None:
        """Drop every queued, done and dead message of every queue."""
        self._run(lambda: self._objects().filter(state__in=(_QUEUED, _DONE, _DEAD)).delete())
        with self._lock:
            self._failures.clear()
        signal(self.using, "settled").notify()

    def join(self, queue_name: str, *, timeout: int | None = None, fail_fast: bool = False) -> None:
        """Wait until a queue has no queued (delayed included) or claimed message.

        Parameters:
          timeout: milliseconds; ``None`` waits forever.
          fail_fast: raise the exception of the first message of this queue
            that this process dead-lettered and that no earlier ``fail_fast``
            join raised (also when it failed before this call).

        Raises:
          QueueJoinTimeout: the timeout ran out.
        """
        validate_queue_name(queue_name)
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        settled = signal(self.using, "settled")
        pause = 0.005
        while True:
            generation = settled.generation
            if fail_fast:
                with self._lock:
                    failures = self._failures.pop(queue_name, None)
                    failed = failures[0] if failures else None
                if failed is not None:
                    raise failed.exception or RuntimeError(failed.fail_reason or "message failed")
            self.maybe_reap()
            if not self.pending_count(queue_name):
                return
            wait = pause
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QueueJoinTimeout(f"Queue {queue_name!r} was not empty after {timeout} ms.")
                wait = min(wait, remaining)
            woken = settled.wait(generation, wait)
            pause = 0.005 if woken else min(pause * 2, self.poll_interval / 1000)

    def close(self) -> None:
        """Stop this process's heartbeat and close this thread's connection."""
        with self._lock:
            if self._pid == os.getpid() and self._heartbeat is not None:
                self._consumers = 1
        self._stop_consuming()
        connection = self.connection
        if not connection.in_atomic_block:
            _close_quietly(connection)

    # Dead letters ------------------------------------------------------------------------------------------

    def _dead(self, queue_name: str | None, message_ids: Iterable[str] | None) -> Any:
        cutoff = current_millis() - self.dead_message_ttl
        query = self._objects().filter(state=_DEAD, updated_at__gte=cutoff)
        if queue_name is not None:
            query = query.filter(queue_name=queue_name)
        if message_ids is not None:
            query = query.filter(message_id__in=list(message_ids))
        return query

    def dead_letters(
        self,
        queue_name: str | None = None,
        *,
        message_ids: Iterable[str] | None = None,
        limit: int | None = 100,
        offset: int = 0,
    ) -> list[DeadLetter]:
        """List dead letters (expired ones excluded), most recent first.

        Parameters:
          queue_name: only this queue's.
          message_ids: only these messages.
          limit: at most this many (``None``: all).
          offset: skip this many first.
        """
        query = self._dead(queue_name, message_ids).order_by("-updated_at", "-id")
        fields = ("id", "message_id", "queue_name", "actor_name", "reason", "updated_at", "deliveries", "payload")
        query = query.values_list(*fields)
        query = query[offset:] if limit is None else query[offset : offset + limit]
        rows = self._run(lambda: list(query), write=False)
        return [
            DeadLetter(
                id=row[0],
                message_id=row[1],
                queue_name=row[2],
                actor_name=row[3],
                reason=row[4],
                died_at=row[5],
                deliveries=row[6],
                data=bytes(row[7]),
            )
            for row in rows
        ]

    def dead_letter_count(self, queue_name: str | None = None) -> int:
        """How many dead letters there are (expired ones excluded)."""
        return int(self._run(lambda: self._dead(queue_name, None).count(), write=False))

    def requeue_dead_letters(self, message_ids: Iterable[str] | None = None, *, queue_name: str | None = None) -> int:
        """Put dead letters back on their queues, to run now; return how many.

        Parameters:
          message_ids: only these messages; all when ``None``.
          queue_name: only this queue's.
        """
        now = current_millis()
        ids = None if message_ids is None else list(message_ids)
        count = 0
        for chunk in [None] if ids is None else chunked(ids):
            count += self._run(
                lambda chunk=chunk: self._dead(queue_name, chunk).update(  # type: ignore[misc]
                    state=_QUEUED, eta=now, updated_at=now, reason="", claimed_by=None, claim_token=None
                )
            )
        if count:
            self._wake_fetchers()
        return count

    def purge_dead_letters(self, message_ids: Iterable[str] | None = None, *, queue_name: str | None = None) -> int:
        """Delete dead letters; return how many.

        Parameters:
          message_ids: only these messages; all when ``None`` (expired ones too).
          queue_name: only this queue's.
        """
        ids = None if message_ids is None else list(message_ids)
        count = 0
        for chunk in [None] if ids is None else chunked(ids):
            query = self._objects().filter(state=_DEAD)
            if queue_name is not None:
                query = query.filter(queue_name=queue_name)
            if chunk is not None:
                query = query.filter(message_id__in=chunk)
            count += self._run(lambda query=query: query.delete()[0])  # type: ignore[misc]
        return count


class DatabaseConsumer(Consumer):
    """Consumes one queue of a :class:`DatabaseBroker`.

    ``fetch`` runs in the worker's consumer thread; ``ack``, ``nack`` and
    ``requeue`` in worker threads, each on its own thread's connection. No
    transaction is held open while waiting.
    """

    def __init__(self, broker: DatabaseBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = prefetch
        self.timeout = timeout
        self._closed = False
        self._idle = False

    def fetch(self, count: int) -> list[MessageProxy]:
        """Claim up to ``count`` runnable messages, waiting up to the timeout.

        Raises:
          ConnectionClosed: the database is unreachable.
        """
        broker = self.broker
        if count <= 0:
            return []
        deadline = time.monotonic() + self.timeout / 1000
        enqueued = signal(broker.using, "enqueued")
        while True:
            generation = enqueued.generation
            broker.maybe_reap()
            # While idle, look (a read) before claiming (a write): idle
            # fetchers then never take SQLite's write lock.
            rows: list[tuple[Any, ...]] = []
            contended = False
            if not self._idle or broker._has_runnable(self.queue_name):
                rows, contended = broker._claim(self.queue_name, count)
            self._idle = not rows and not contended
            if rows:
                return [self._proxy(row) for row in rows]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if contended:
                continue  # another fetcher took them: look again at once
            enqueued.wait(generation, min(remaining, broker.poll_interval / 1000))

    def _proxy(self, row: tuple[Any, ...]) -> MessageProxy:
        row_id, message_id, actor_name, _, _, payload = row
        data = bytes(payload)
        limit = self.broker.max_message_size
        try:
            message = Message.decode(data)
        except DecodeError as exc:
            # Undecodable: the worker dead-letters it at once, with its reason.
            proxy = MessageProxy(self._placeholder(message_id, actor_name), tag=row_id)
            proxy.stuff_exception(exc)
            proxy.fail(f"undecodable message: {exc}")
            return proxy
        proxy = MessageProxy(message, tag=row_id)
        if len(data) > limit:
            error = MessageTooLarge(f"message is {len(data)} bytes, over max_message_size ({limit} bytes)")
            proxy.stuff_exception(error)
            proxy.fail(str(error))
        return proxy

    def _placeholder(self, message_id: str, actor_name: str) -> Message[Any]:
        placeholder: Message[Any] = Message(queue_name=self.queue_name, actor_name="", args=(), kwargs={}, options={})
        return placeholder.copy(message_id=message_id) if message_id else placeholder

    def ack(self, message: MessageProxy) -> None:
        self.broker._ack(message.tag)

    def nack(self, message: MessageProxy) -> None:
        self.broker._nack(message)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        row_ids = [proxy.tag for proxy in messages]
        if row_ids:
            self.broker._requeue(row_ids)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.broker._stop_consuming()


@dataclasses.dataclass(eq=False)
class _Settlement:
    """An ack (no proxy) or a nack (the failed proxy) waiting to be written."""

    row_id: int
    proxy: MessageProxy | None = None
    done: bool = False
    error: BaseException | None = None


class _SettlerThread(threading.Thread):
    """Writes acks and nacks of a consuming process in batches, on its own
    connection: a worker thread hands its settlement over and waits until it
    is committed, and settlements that arrive while one batch is written go
    together in the next (group commit)."""

    def __init__(self, broker: DatabaseBroker) -> None:
        super().__init__(name="django-actors-settler", daemon=True)
        self.broker = broker
        self._condition = threading.Condition()
        self._pending: list[_Settlement] = []
        self._stopping = False

    def submit(self, settlement: _Settlement) -> bool:
        """Queue a settlement and wait until it is written; ``False`` when stopped.

        Raises:
          Exception: writing its batch failed.
        """
        with self._condition:
            if self._stopping or not self.is_alive():
                return False
            self._pending.append(settlement)
            self._condition.notify_all()
            while not settlement.done:
                self._condition.wait()
        if settlement.error is not None:
            raise settlement.error
        return True

    def run(self) -> None:
        try:
            while True:
                with self._condition:
                    while not self._pending and not self._stopping:
                        self._condition.wait()
                    if not self._pending:
                        return
                    batch, self._pending = self._pending, []
                error: BaseException | None = None
                try:
                    self.broker._run(lambda batch=batch: self.broker._settle_batch(batch))  # type: ignore[misc]
                except BaseException as exc:
                    error = exc
                with self._condition:
                    for settlement in batch:
                        settlement.error = error
                        settlement.done = True
                    self._condition.notify_all()
        finally:
            connections.close_all()

    def stop(self) -> None:
        """Write what is pending, then stop."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self is not threading.current_thread():
            self.join(30)


class _HeartbeatThread(threading.Thread):
    """Keeps a worker's heartbeat row fresh; closes its connection when done."""

    def __init__(self, broker: DatabaseBroker, worker_id: str) -> None:
        super().__init__(name="django-actors-heartbeat", daemon=True)
        self.broker = broker
        self.worker_id = worker_id
        self.interval = max(broker.heartbeat_timeout / 4000, 0.01)
        self._stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self._stopped.wait(self.interval):
                try:
                    run_with_retries(self.broker.using, lambda: self.broker._beat(self.worker_id), lock_timeout=5.0)
                except Exception:
                    logger.warning("Could not write the heartbeat of worker %s.", self.worker_id, exc_info=True)
        finally:
            connections.close_all()

    def stop(self) -> None:
        self._stopped.set()
        if self is not threading.current_thread():
            self.join(5)


def _after_fork_in_child() -> None:
    # Locks held by threads of the parent would stay held forever in the
    # child, and the parent's threads do not exist here: start afresh.
    global _signals_lock, _write_locks_lock
    _signals.clear()
    _signals_lock = threading.Lock()
    _write_locks.clear()
    _write_locks_lock = threading.Lock()
    _Listener._instances.clear()
    _Listener._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Listener(threading.Thread):
    """One per process and PostgreSQL alias: ``LISTEN`` on a dedicated psycopg
    connection and wake the process's idle fetchers on every ``NOTIFY``."""

    _instances: dict[str, _Listener] = {}
    _lock = threading.Lock()

    def __init__(self, using: str) -> None:
        super().__init__(name=f"django-actors-listen-{using}", daemon=True)
        self.using = using
        self.users = 0
        self._stopped = threading.Event()

    @classmethod
    def acquire(cls, using: str) -> None:
        """Start (or share) the listener of ``using``."""
        try:
            import psycopg  # noqa: F401
        except ImportError:  # psycopg2 only: fetchers poll
            return
        with cls._lock:
            listener = cls._instances.get(using)
            if listener is None or not listener.is_alive():
                listener = cls._instances[using] = cls(using)
                listener.start()
            listener.users += 1

    @classmethod
    def release(cls, using: str) -> None:
        """Stop the listener of ``using`` when its last user is gone."""
        with cls._lock:
            listener = cls._instances.get(using)
            if listener is None:
                return
            listener.users -= 1
            if listener.users > 0:
                return
            del cls._instances[using]
        listener._stopped.set()
        listener.join(5)

    def run(self) -> None:
        import psycopg

        enqueued = signal(self.using, "enqueued")
        backoff = 0.1
        while not self._stopped.is_set():
            try:
                params = connections[self.using].get_connection_params()
                params.pop("cursor_factory", None)
                params.pop("context", None)
                with psycopg.connect(**params, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    backoff = 0.1
                    enqueued.notify()  # catch up on anything sent while not listening
                    while not self._stopped.is_set():
                        for _ in conn.notifies(timeout=0.25, stop_after=1):
                            enqueued.notify()
            except TypeError:  # psycopg < 3.2: no notifies(timeout=...)
                logger.info("psycopg is older than 3.2: idle fetchers poll instead of listening.")
                return
            except Exception as exc:
                if self._stopped.is_set():
                    break
                logger.warning("LISTEN on database %r failed (%s); retrying in %.1fs.", self.using, exc, backoff)
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 10.0)
