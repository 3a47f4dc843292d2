"""The admin mirror's write side: an in-process event buffer and its flusher.

How it works
------------
The :class:`~django_actors.middleware.mirror.Mirror` middleware appends one
small tuple of strings and numbers per event (enqueued, succeeded, errored,
skipped, dead-lettered; with bounded, redacted previews) to a
:class:`Recorder`'s deque. A start only notes the message as running: the
event that ends it carries the start time. That is all the hot path does,
a microsecond or two per event: no database work.

A daemon thread per process (the flusher) drains the deque every
``flush_interval`` milliseconds (and when a worker stops), adds a "started"
event for each message still running, and writes them in a few statements
inside one transaction:

1. The events are folded into one row per message, and the rows are upserted
   with a single ``executemany`` of ``INSERT ... ON CONFLICT (message_id) DO
   UPDATE ... WHERE existing.rank < new.rank`` (SQLite >= 3.24 and PostgreSQL).
   A message's *rank* is ``attempt * RANK_STRIDE + <rank of the event>``, so
   states only move forward: a late "enqueued" never overwrites "succeeded",
   and a retry (the next attempt) moves a message on from its errored attempt.
2. The compositions those messages belong to (and every enclosing one) are
   refreshed from the results backend: one ``_get_many`` for their end,
   cancel (and, for ones this process has not seen yet, meta) records and one
   ``_count_members`` for all their completion counters. Failed and skipped
   members are counted in the mirror itself with one grouped query.
3. Finished counts are added to the per-minute rows of the throughput chart.
4. A worker process writes its heartbeat row (at least every 5 seconds).

Rows older than the retention are pruned by the flusher about once an hour,
and by ``manage.py prune_mirror``.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import logging
import os
import reprlib
import socket
import threading
import time
import traceback
import weakref
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .redaction import MASK, is_sensitive, mask_urls, redact_keys

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from .broker import Broker
    from .message import Message
    from .results.backend import ResultBackend
    from .worker import Worker

logger = logging.getLogger(__name__)

#: The flusher's default period, in milliseconds.
DEFAULT_FLUSH_INTERVAL = 1000
#: How long mirror rows are kept by default, in milliseconds (7 days).
DEFAULT_RETENTION = 7 * 24 * 3600 * 1000
#: The most events kept in memory; beyond it the oldest are dropped (and a warning logged).
DEFAULT_MAX_BUFFER = 200_000
#: The longest argument or result preview stored, in characters.
PREVIEW_LENGTH = 500
#: The longest traceback stored, in characters (the end is kept).
TRACEBACK_LENGTH = 8000
#: How often an idle worker writes its heartbeat, in seconds.
HEARTBEAT_INTERVAL = 5.0
#: How often the flusher prunes old rows, in seconds.
PRUNE_INTERVAL = 3600.0
#: The page cache of the flusher's own SQLite connection, in KiB.
SQLITE_CACHE_KIB = 16_384
#: How many compositions a process remembers having written.
KNOWN_COMPOSITIONS = 10_000

# Event kinds (indexes into _EVENT_RANK).
ENQUEUE, START, ERROR, SKIP, SUCCESS, NACK = range(6)
#: The rank of each event kind within one attempt.
_EVENT_RANK = (1, 2, 5, 8, 8, 9)
#: Ranks of consecutive attempts are this far apart.
RANK_STRIDE = 16


class _PreviewRepr(reprlib.Repr):
    """A bounded ``repr`` that hides secrets in what it shows: the values of
    sensitive dict keys (``DJANGO_ACTORS["REDACT"]``) and the passwords of
    URLs in strings (see :mod:`django_actors.redaction`). Only the parts that
    are shown are visited, so a huge result costs no more than a small one.
    """

    def __init__(self, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.keys = keys
        self.maxstring = self.maxother = 200
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = 20
        self.maxlevel = 4

    def repr_str(self, x: str, level: int) -> str:
        if len(x) > self.maxstring:
            return repr(mask_urls(x[: self.maxstring])) + "\u2026"
        return repr(mask_urls(x))

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{" + self.fillvalue + "}"
        pieces = []
        for index, (key, value) in enumerate(x.items()):
            if index >= self.maxdict:
                pieces.append(self.fillvalue)
                break
            shown = _MASKED if is_sensitive(key, self.keys) else self.repr1(value, level - 1)
            pieces.append(f"{self.repr1(key, level - 1)}: {shown}")
        return "{" + ", ".join(pieces) + "}"


_MASKED = repr(MASK)


def _previewer() -> _PreviewRepr:
    return _PreviewRepr(tuple(redact_keys()))


def message_rank(kind: int, attempt: int) -> int:
    """The rank of an event: it orders every event of a message across attempts."""
    return max(attempt, 0) * RANK_STRIDE + _EVENT_RANK[kind]


def truncate(text: str, limit: int = PREVIEW_LENGTH) -> str:
    """Cut ``text`` to ``limit`` characters, marking the cut with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


#: The message option that carries composition membership (composition.OPTION).
_OPTION = "composition"


def _membership(value: Any) -> tuple[str, int | None, tuple[str, ...]] | None:
    """``options["composition"]`` as ``(id, position, path)``, or ``None`` when malformed."""
    if type(value) is not dict or "id" not in value:
        return None
    composition_id = str(value["id"])
    position = value.get("pos")
    path = value.get("path")
    return (
        composition_id,
        position if type(position) is int else None,
        tuple(map(str, path)) if isinstance(path, list | tuple) and path else (composition_id,),
    )


#: Types whose ``repr`` is short and cheap: previewed without reprlib.
_PLAIN = frozenset({int, float, bool, type(None)})


def _plain(value: Any) -> bool:
    """Whether ``repr(value)`` is short, cheap and cannot hide a secret."""
    kind = type(value)
    if kind in _PLAIN:
        return True
    if kind is not str or len(value) > 100:
        return False
    lowered = value.lower()  # what mask_urls looks for
    return "://" not in value and "pass" not in lowered and "pwd" not in lowered


def preview_call(args: Iterable[Any], kwargs: dict[str, Any]) -> str:
    """A short, bounded representation of a call's arguments, secrets
    redacted (``DJANGO_ACTORS["REDACT"]``, see :mod:`django_actors.redaction`)."""
    if not kwargs and type(args) is tuple and len(args) <= 8 and all(map(_plain, args)):
        text = ", ".join(map(repr, args))  # the common case: a few numbers and short strings
        return text if len(text) <= PREVIEW_LENGTH else truncate(text)
    try:
        previewer = _previewer()
        parts = [previewer.repr(arg) for arg in args]
        parts += [
            f"{name}={_MASKED if is_sensitive(name, previewer.keys) else previewer.repr(value)}"
            for name, value in kwargs.items()
        ]
        return truncate(", ".join(parts))
    except Exception as exc:  # a broken __repr__ must not stop the mirror
        return f"<arguments could not be shown: {type(exc).__name__}>"


def preview_value(value: Any) -> str:
    """A short, bounded representation of a result, secrets redacted."""
    if _plain(value):
        return repr(value)
    try:
        return truncate(_previewer().repr(value))
    except Exception as exc:
        return f"<result could not be shown: {type(exc).__name__}>"


def format_failure(exception: BaseException | None, reason: str | None = None) -> str:
    """The traceback of ``exception`` (its end), else ``reason``."""
    if exception is not None and exception.__traceback__ is not None:
        text = "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
        if reason and reason not in text:
            text = f"{reason}\n\n{text}"
        return text[-TRACEBACK_LENGTH:]
    if reason:
        return reason[-TRACEBACK_LENGTH:]
    if exception is not None:
        return f"{type(exception).__name__}: {exception}"[-TRACEBACK_LENGTH:]
    return ""


def _from_ms(value: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(value / 1000, tz=datetime.UTC)


# Folding events into rows --------------------------------------------------------------


#: What the hot path buffers for one event: only strings, numbers and
#: tuples of them, so the garbage collector untracks it at once and nothing
#: the worker is done with (messages, results, tracebacks) is kept alive.
#: (kind, when ms, message id, actor, queue, created ms, eta ms, retries,
#: membership (id, position, path) or None, arguments preview, text,
#: started ms or None) where text is the result preview or the traceback.
Event = tuple[int, int, str, str, str, int, Any, int, Any, str, str, Any]


class _Row:
    """The merged state of one message within a batch of events (times in epoch ms)."""

    __slots__ = (
        "actor_name", "args_preview", "composition_id", "enqueued_ms", "eta_ms", "finished_ms", "message_id",
        "position", "queue_name", "rank", "result_preview", "retries", "root_id", "started_ms", "status",
        "traceback", "worker",
    )  # fmt: skip

    def __init__(self, event: Event) -> None:
        self.message_id, self.actor_name, self.queue_name, self.enqueued_ms, self.eta_ms = event[2:7]
        membership = event[8]
        self.composition_id: str | None = None
        self.root_id: str | None = None
        self.position: int | None = None
        if membership is not None:
            self.composition_id, self.position, path = membership
            self.root_id = path[0] if path else self.composition_id
        self.retries = 0
        self.args_preview = ""
        self.rank = -1
        self.status = ""
        self.result_preview = ""
        self.traceback = ""
        self.started_ms: int | None = None
        self.finished_ms: int | None = None
        self.worker = ""

    def apply(self, event: Event, worker: str) -> None:
        kind, when, _, _, _, _, _, attempt, _, args_preview, text, started = event
        if args_preview:
            self.args_preview = args_preview
        rank = attempt * RANK_STRIDE + _EVENT_RANK[kind] if attempt > 0 else _EVENT_RANK[kind]
        if rank < self.rank:
            return  # an older event (a redelivery): the row already holds a later state
        self.rank = rank
        self.retries = attempt
        if kind == START:
            self.status = "started"
            self.started_ms = when
            self.finished_ms = None
            self.worker = worker
        elif kind == SUCCESS:
            self.status = "succeeded"
            self.result_preview = text
            self.started_ms = started or self.started_ms
            self.finished_ms = when
            self.worker = worker
        elif kind == ENQUEUE:
            if attempt > 0:
                self.status = "retrying"
                self.traceback = text or self.traceback  # the failed attempt's, carried by the retry
            elif self.eta_ms is not None and self.eta_ms > when:
                self.status = "delayed"
            else:
                self.status = "enqueued"
        else:
            self.started_ms = started or self.started_ms
            self.finished_ms = when
            self.worker = worker
            self.traceback = text or self.traceback
            self.status = "retrying" if kind == ERROR else "skipped" if kind == SKIP else "failed"

    def values(self, updated: Any) -> tuple[Any, ...]:
        """The row as the message upsert's parameters."""
        return (
            self.message_id, self.actor_name, self.queue_name, self.composition_id, self.root_id, self.position,
            self.status, self.rank, self.retries, self.args_preview, self.result_preview, self.traceback,
            self.enqueued_ms, self.eta_ms, self.started_ms, self.finished_ms, self.worker, updated,
        )  # fmt: skip


def _event_values(event: Event, worker: str, updated: Any) -> tuple[Any, ...]:
    """The upsert parameters of a message seen in one event only: what
    ``_Row(event)`` with ``apply(event)`` gives, without making the object."""
    kind, when, message_id, actor, queue, created, eta, attempt, membership, args, text, started = event
    composition_id = root_id = position = None
    if membership is not None:
        composition_id, position, path = membership
        root_id = path[0] if path else composition_id
    rank = attempt * RANK_STRIDE + _EVENT_RANK[kind] if attempt > 0 else _EVENT_RANK[kind]
    result = traceback_text = ""
    finished = None
    if kind == SUCCESS:
        status, result, finished = "succeeded", text, when
    elif kind == START:
        status, started = "started", when
    elif kind == ENQUEUE:
        worker, started = "", None
        if attempt > 0:
            status, traceback_text = "retrying", text
        else:
            status = "delayed" if eta is not None and eta > when else "enqueued"
    else:
        status = "retrying" if kind == ERROR else "skipped" if kind == SKIP else "failed"
        traceback_text, finished = text, when
    return (
        message_id, actor, queue, composition_id, root_id, position, status, rank, attempt, args, result,
        traceback_text, created, eta, started, finished, worker, updated,
    )  # fmt: skip


def _attempt(message: Message[Any]) -> int:
    retries = message.options.get("retries", 0)
    return retries if type(retries) is int else 0


def _event(kind: int, when: int, message: Message[Any], text: str, started: int | None) -> Event:
    """The flat event for ``message`` (see :data:`Event`)."""
    options = message.options
    membership = options.get(_OPTION)
    retries = options.get("retries", 0)
    if type(retries) is not int:
        retries = 0
    eta = options.get("eta")
    if kind == ENQUEUE and retries:
        text = str(options.get("traceback") or "")[-TRACEBACK_LENGTH:]
    return (
        kind,
        when,
        message.message_id,
        message.actor_name,
        message.queue_name,
        message.message_timestamp,
        eta if type(eta) is int else None,
        retries,
        None if membership is None else _membership(membership),
        preview_call(message.args, message.kwargs),
        text,
        started,
    )


class _Touch:
    """What a batch says about one composition (times in epoch ms)."""

    __slots__ = ("active", "first", "last", "names", "started")

    def __init__(self) -> None:
        self.active = False
        self.started: int | None = None
        self.first: int | None = None
        self.last = 0
        self.names: dict[int, str] = {}


# The recorder ------------------------------------------------------------------------------

_recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()
_hooks_installed = False
_hooks_lock = threading.Lock()


def _install_process_hooks() -> None:
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
    atexit.register(_flush_all_at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_reset_all_after_fork)


def _flush_all_at_exit() -> None:
    for recorder in list(_recorders):
        try:
            recorder.stop()
        except Exception:  # pragma: no cover - interpreter shutdown
            logger.debug("Mirror flush at exit failed.", exc_info=True)


def _reset_all_after_fork() -> None:
    for recorder in list(_recorders):
        recorder._after_fork()


class Recorder:
    """Buffers mirror events in memory and writes them to the database in batches.

    Parameters:
      flush_interval: how often the flusher writes, in milliseconds.
      retention: how long rows are kept, in milliseconds; ``None`` never prunes.
      max_buffer: the most events kept in memory while the database is slow or down.
      using: the database alias; the router's choice for the mirror models when ``None``.

    ``record`` may be called from any thread; it only appends to a deque.
    """

    #: How often an idle worker writes its heartbeat, in seconds.
    heartbeat_interval = HEARTBEAT_INTERVAL

    def __init__(
        self,
        *,
        flush_interval: int = DEFAULT_FLUSH_INTERVAL,
        retention: int | None = DEFAULT_RETENTION,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        using: str | None = None,
    ) -> None:
        if not isinstance(flush_interval, int) or flush_interval <= 0:
            raise ValueError(f"flush_interval must be a positive number of milliseconds, not {flush_interval!r}.")
        if retention is not None and (not isinstance(retention, int) or retention <= 0):
            raise ValueError(f"retention must be a positive number of milliseconds or None, not {retention!r}.")
        self.flush_interval = flush_interval
        self.retention = retention
        self.max_buffer = max_buffer
        self.using = using
        self.broker: Broker | None = None
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self._events: deque[Event] = deque(maxlen=max_buffer)
        self._flush_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._known: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self._recheck: dict[str, _Touch] = {}
        self._worker: dict[str, Any] | None = None
        self._worker_dirty = False
        self._last_heartbeat = 0.0
        self._last_prune = time.monotonic()
        #: message id -> (start ms, message) for the messages running now.
        self._running: dict[str, tuple[int, Message[Any]]] = {}
        #: (message id, attempt) of the running messages whose "started" row was written.
        self._started_written: set[tuple[str, int]] = set()
        self._processed = 0
        self._failed = 0
        self._warned_full = False
        _recorders.add(self)
        _install_process_hooks()

    # Hot path -------------------------------------------------------------------

    def record(self, broker: Broker, kind: int, message: Message[Any], extra: Any = None) -> None:
        """Buffer one event: no I/O, a microsecond or two.

        A START only notes the message as running: the event that ends it
        carries its start time, and the flusher writes "started" for the
        messages still running when it flushes. Most messages thus cost one
        event and one row write, however short they run.

        Parameters:
          kind: ENQUEUE, START, SUCCESS (``extra``: the result), ERROR
            (``extra``: the exception), SKIP or NACK (``extra``:
            ``(exception, reason)``).
        """
        self.broker = broker
        if kind == START:
            self._running[message.message_id] = (int(time.time() * 1000), message)
            if self._thread is None:
                self.start()
            return
        started = None
        if kind != ENQUEUE:
            running = self._running.pop(message.message_id, None)
            started = running[0] if running is not None else None
        text = ""
        if kind == SUCCESS:
            text = preview_value(extra)
        elif kind == ERROR:
            text = format_failure(extra)
        elif kind == NACK:
            text = format_failure(*extra)
        self._events.append(_event(kind, int(time.time() * 1000), message, text, started))
        if self._thread is None:
            self.start()

    @property
    def in_flight(self) -> int:
        """How many messages this process is running now."""
        return len(self._running)

    # Lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the flusher thread (idempotent)."""
        with self._state_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping.clear()
            thread = threading.Thread(target=self._run, name="django-actors-mirror", daemon=True)
            self._thread = thread
        thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Flush what is buffered and stop the flusher thread."""
        with self._state_lock:
            thread, self._thread = self._thread, None
        self._stopping.set()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._events or self._worker_dirty:
            # On the caller's own connection, which is left open: it is theirs.
            try:
                self.flush()
            except Exception:
                logger.warning("The admin mirror could not write its last events.", exc_info=True)

    def wake(self) -> None:
        """Ask the flusher to write now."""
        self._wake.set()

    def _after_fork(self) -> None:
        # The child inherits the parent's buffer (the parent writes it) but not its thread.
        self._events.clear()
        self._running.clear()
        self._started_written.clear()
        self._thread = None
        self._worker = None
        self._flush_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"

    def _run(self) -> None:
        interval = self.flush_interval / 1000
        failures = 0
        try:
            while not self._stopping.is_set():
                self._wake.wait(interval)
                self._wake.clear()
                if self._stopping.is_set():
                    break
                try:
                    self.flush()
                    failures = 0
                except Exception:
                    failures += 1
                    if failures == 1:
                        logger.exception("The admin mirror could not write its events; it will try again.")
                    else:
                        logger.debug("The admin mirror still cannot write its events.", exc_info=True)
        finally:
            _close_connection(self._alias())

    # Workers ---------------------------------------------------------------------

    def worker_started(self, worker: Worker) -> None:
        """Remember that this process runs a worker (it will write heartbeats)."""
        queues = sorted(worker.queues) if worker.queues is not None else []
        self._worker = {
            "queues": ", ".join(queues) or "*",
            "threads": worker.worker_threads,
            "started": datetime.datetime.now(tz=datetime.UTC),
            "stopped": None,
        }
        self._worker_dirty = True
        self.start()
        self.wake()

    def worker_stopped(self) -> None:
        """Write the final heartbeat of this process's worker, marked stopped."""
        if self._worker is None:
            return
        self._worker["stopped"] = datetime.datetime.now(tz=datetime.UTC)
        self._worker_dirty = True
        try:
            self.flush()
        finally:
            self._worker = None

    # Flushing ----------------------------------------------------------------------

    def _alias(self) -> str:
        if self.using:
            return self.using
        from django.db import router

        from .models.mirror import MessageRecord

        return router.db_for_write(MessageRecord) or "default"

    def _started_events(self) -> list[Event]:
        """ "started" events for the messages running now whose start is not written yet."""
        running = list(self._running.items())  # one C call: safe while worker threads add and pop
        now = {(message_id, _attempt(message)) for message_id, (_, message) in running}
        self._started_written &= now
        events = []
        for message_id, (started, message) in running:
            key = (message_id, _attempt(message))
            if key not in self._started_written:
                self._started_written.add(key)
                events.append(_event(START, started, message, "", started))
        return events

    def _drain(self) -> list[Event]:
        events = []
        pop = self._events.popleft
        try:
            for _ in range(len(self._events)):
                events.append(pop())
        except IndexError:
            pass
        return events

    def flush(self) -> int:
        """Write every buffered event now. Returns how many events were written.

        Raises:
          DatabaseError: the database refused the batch; the events stay
            buffered for the next flush.
        """
        from django.apps import apps

        if not apps.ready:
            return 0
        with self._flush_lock:
            if len(self._events) >= self.max_buffer and not self._warned_full:
                self._warned_full = True
                logger.warning(
                    "The admin mirror's buffer is full (%d events): older events were dropped. "
                    "Is the database slow or down?",
                    self.max_buffer,
                )
            events = self._drain()
            events += self._started_events()
            heartbeat_due = self._worker is not None and (
                self._worker_dirty or time.monotonic() - self._last_heartbeat >= self.heartbeat_interval
            )
            if not events and not self._recheck and not heartbeat_due:
                self._maybe_prune()
                return 0
            try:
                self._write(events, heartbeat_due)
            except Exception:
                if len(events) + len(self._events) <= self.max_buffer:
                    self._events.extendleft(reversed(events))
                else:
                    logger.error("The admin mirror dropped %d events it could not write.", len(events))
                raise
            self._warned_full = False
            self._maybe_prune()
            return len(events)

    def _write(self, events: list[Event], heartbeat_due: bool) -> None:
        from django.db import close_old_connections, connections, transaction

        worker = self.worker_name if self._worker is not None else ""
        # One entry per message: the event itself when it has one in this
        # batch (the common case: no object made, nothing for the garbage
        # collector to follow), a _Row folding them when it has several.
        rows: dict[str, Event | _Row] = {}
        touched: dict[str, _Touch] = dict(self._recheck)
        fresh: set[str] = set()
        minutes: dict[int, list[int]] = {}
        for event in events:
            kind, when, message_id = event[0], event[1], event[2]
            row = rows.get(message_id)
            if row is None:
                rows[message_id] = event
            else:
                if isinstance(row, tuple):
                    first = row
                    row = rows[message_id] = _Row(first)
                    row.apply(first, worker if first[0] != ENQUEUE else "")
                row.apply(event, worker if kind != ENQUEUE else "")
            if kind == SUCCESS:
                self._processed += 1
                minutes.setdefault(when // 60_000, [0, 0])[0] += 1
            elif kind == NACK:
                self._failed += 1
                minutes.setdefault(when // 60_000, [0, 0])[1] += 1
            if event[8] is not None:
                self._touch(touched, fresh, event)
        self._recheck = {}
        alias = self._alias()
        connection = connections[alias]
        if threading.current_thread() is self._thread:
            close_old_connections()  # like a request: honours CONN_MAX_AGE
            if connection.vendor == "sqlite":
                # This thread's own connection: a page cache big enough for
                # the message table's primary key (random ids) to stay in memory.
                with connection.cursor() as cursor:
                    cursor.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
        now = datetime.datetime.now(tz=datetime.UTC)
        progress = self._read_progress(touched, fresh)
        with transaction.atomic(using=alias):
            if rows:
                _upsert_messages(connection, list(rows.values()), now, worker)
            if minutes:
                _add_minutes(connection, minutes)
            if progress:
                self._upsert_compositions(connection, touched, progress, now)
            if heartbeat_due and self._worker is not None:
                self._write_heartbeat(connection, now)
        if heartbeat_due:
            self._last_heartbeat = time.monotonic()
            self._worker_dirty = False

    @staticmethod
    def _touch(touched: dict[str, _Touch], fresh: set[str], event: Event) -> None:
        """Note what an event says about its composition and every enclosing one (times in ms)."""
        kind, when, created = event[0], event[1], event[5]
        for composition_id in event[8][2]:
            touch = touched.get(composition_id)
            if touch is None or composition_id not in fresh:
                touch = touched[composition_id] = _Touch()
                fresh.add(composition_id)
            touch.last = max(touch.last, when)
            touch.first = created if touch.first is None else min(touch.first, created)
            if kind != ENQUEUE:
                touch.active = True
                began = when if kind == START else event[11]
                if began is not None:
                    touch.started = began if touch.started is None else min(touch.started, began)
        composition_id, position, _ = event[8]
        owner = touched.get(composition_id)
        if owner is not None and position is not None:
            owner.names.setdefault(position, event[3])

    # Compositions ---------------------------------------------------------------------

    def _backend(self) -> ResultBackend | None:
        broker = self.broker
        if broker is None or not broker.has_results_backend():
            return None
        return broker.get_results_backend()

    def _read_progress(self, touched: dict[str, _Touch], fresh: set[str]) -> dict[str, dict[str, Any]]:
        """Read end, cancel, meta records and counters for ``touched`` compositions:
        two backend round trips (three when a new pipeline needs its step names)."""
        if not touched:
            return {}
        backend = self._backend()
        if backend is None:
            return {}
        from .composition import _key

        ids = list(touched)
        unknown = [cid for cid in ids if cid not in self._known]
        keys = [_key(backend, cid, "end") for cid in ids]
        keys += [_key(backend, cid, "cancel") for cid in ids]
        keys += [_key(backend, cid, "meta") for cid in unknown]
        try:
            records = backend._get_many(keys)
            counts = backend._count_members([_key(backend, cid, "done") for cid in ids])
        except Exception:
            logger.warning("The admin mirror could not read composition progress; retrying later.", exc_info=True)
            self._recheck.update({cid: touched[cid] for cid in fresh})
            return {}
        count = len(ids)
        ends, cancels, metas = records[:count], records[count : 2 * count], records[2 * count :]
        meta_by_id = dict(zip(unknown, metas, strict=True))
        steps = self._read_step_names(backend, meta_by_id)
        progress: dict[str, dict[str, Any]] = {}
        cancelled_ids = {cid for cid, flag in zip(ids, cancels, strict=True) if flag is not None}
        for cid, end, done in zip(ids, ends, counts, strict=True):
            static = self._known.get(cid)
            if static is None:
                meta = meta_by_id.get(cid)
                if not isinstance(meta, dict):
                    continue  # expired, or not a composition this backend knows
                static = self._static_fields(cid, meta, touched[cid], steps.get(cid, {}))
            progress[cid] = {"static": static, "end": end, "completed": int(done), "fresh": cid in fresh}
        for cid, entry in progress.items():
            parent = entry["static"][1]
            flagged = cid in cancelled_ids
            seen = {cid}
            while not flagged and parent and parent not in seen:
                seen.add(parent)
                flagged = parent in cancelled_ids
                parent_static = progress.get(parent, {}).get("static") or self._known.get(parent)
                parent = parent_static[1] if parent_static else None
            entry["cancelled"] = flagged
        return progress

    def _read_step_names(self, backend: ResultBackend, metas: dict[str, Any]) -> dict[str, dict[int, str]]:
        from .composition import _key

        wanted: list[tuple[str, int]] = []
        for cid, meta in metas.items():
            if isinstance(meta, dict) and meta.get("k") == "p":
                wanted += [(cid, position) for position in range(1, min(int(meta.get("n", 0)), 20))]
        if not wanted:
            return {}
        try:
            specs = backend._get_many([_key(backend, cid, f"s:{position}") for cid, position in wanted])
        except Exception:
            return {}
        names: dict[str, dict[int, str]] = {}
        for (cid, position), spec in zip(wanted, specs, strict=True):
            if isinstance(spec, dict):
                names.setdefault(cid, {})[position] = _spec_name(spec)
        return names

    def _static_fields(self, cid: str, meta: dict[str, Any], touch: _Touch, steps: dict[int, str]) -> tuple[Any, ...]:
        kind = "pipeline" if meta.get("k") == "p" else "group"
        total = int(meta.get("n", 0))
        up = meta.get("up")
        parent, position = (str(up[0]), int(up[1])) if isinstance(up, list | tuple) and len(up) == 2 else (None, None)
        path = meta.get("path") or [cid]
        root = str(path[0])
        names = {**steps, **touch.names}
        if kind == "pipeline":
            labels = [names.get(position, "\u2026") for position in range(min(total, 20))]
            name = " \u2192 ".join(labels) + (" \u2192 \u2026" if total > 20 else "")
        else:
            name = ", ".join(dict.fromkeys(names[position] for position in sorted(names)))
        created = _from_ms(touch.first) if touch.first is not None else None
        static = (kind, parent, root, position, total, truncate(name, 255), created)
        self._known[cid] = static
        while len(self._known) > KNOWN_COMPOSITIONS:
            self._known.popitem(last=False)
        return static

    def _upsert_compositions(
        self,
        connection: BaseDatabaseWrapper,
        touched: dict[str, _Touch],
        progress: dict[str, dict[str, Any]],
        now: datetime.datetime,
    ) -> None:
        from .models.mirror import COMPOSITION_RANK, Composition, MessageRecord

        ids = list(progress)
        tallies: dict[str, dict[str, int]] = {cid: {"failed": 0, "skipped": 0} for cid in ids}
        for chunk in _chunks(ids, 500):
            grouped = (
                MessageRecord.objects.using(connection.alias)
                .filter(composition_id__in=chunk, status__in=("failed", "skipped"))
                .values_list("composition_id", "status")
                .order_by()
                .annotate(n=_count())
            )
            for cid, status, n in grouped:
                tallies[cid]["failed" if status == "failed" else "skipped"] += n
            nested = (
                Composition.objects.using(connection.alias)
                .filter(parent_id__in=chunk, status__in=("failed", "cancelled"))
                .values_list("parent_id", "status")
                .order_by()
                .annotate(n=_count())
            )
            for cid, status, n in nested:
                tallies[cid]["failed" if status == "failed" else "skipped"] += n
        rows = []
        for cid in ids:
            entry = progress[cid]
            kind, parent, root, position, total, name, created = entry["static"]
            touch = touched[cid]
            end = entry["end"]
            completed = min(entry["completed"], total) if total else entry["completed"]
            if entry["cancelled"] or (isinstance(end, dict) and end.get("e", {}).get("type") == "Cancelled"):
                status = "cancelled"
            elif isinstance(end, dict) and "e" in end:
                status = "failed"
            elif end is not None:
                status = "succeeded"
                completed = total
            elif touch.active or completed:
                status = "running"
            else:
                status = "pending"
            final = status in ("failed", "cancelled", "succeeded")
            finished = _from_ms(touch.last) if final and touch.last else (now if final else None)
            started = _from_ms(touch.started) if touch.started is not None else None
            if started is None and status != "pending":
                started = _from_ms(touch.last) if touch.last else now
            rows.append(
                (
                    cid,
                    kind,
                    name,
                    parent,
                    root,
                    position,
                    total,
                    completed,
                    tallies[cid]["failed"],
                    tallies[cid]["skipped"],
                    status,
                    COMPOSITION_RANK[status],
                    created or now,
                    started,
                    finished,
                    now,
                )
            )
        _upsert_compositions(connection, rows)
        # Read once more next time: a member's hooks may still have been
        # updating the backend when this batch was read.
        self._recheck.update({cid: touched[cid] for cid in ids if progress[cid]["fresh"] and not _final(progress[cid])})

    def _write_heartbeat(self, connection: BaseDatabaseWrapper, now: datetime.datetime) -> None:
        from .models.mirror import WorkerRecord

        state = self._worker
        assert state is not None
        hostname, _, pid = self.worker_name.rpartition(":")
        WorkerRecord.objects.using(connection.alias).update_or_create(
            worker_id=self.worker_name,
            defaults={
                "hostname": hostname,
                "pid": int(pid),
                "queues": state["queues"],
                "threads": state["threads"],
                "in_flight": len(self._running) if state["stopped"] is None else 0,
                "processed": self._processed,
                "failed": self._failed,
                "started": state["started"],
                "heartbeat": now,
                "stopped": state["stopped"],
            },
        )

    # Pruning ---------------------------------------------------------------------------

    def _maybe_prune(self) -> None:
        if self.retention is None or time.monotonic() - self._last_prune < PRUNE_INTERVAL:
            return
        self._last_prune = time.monotonic()
        try:
            prune(datetime.timedelta(milliseconds=self.retention), using=self._alias())
        except Exception:
            logger.warning("The admin mirror could not prune old rows.", exc_info=True)


def _final(entry: dict[str, Any]) -> bool:
    return bool(entry["cancelled"] or entry["end"] is not None)


def _spec_name(spec: dict[str, Any]) -> str:
    if "m" in spec and isinstance(spec["m"], dict):
        return str(spec["m"].get("actor_name", "?"))
    return "pipeline" if "p" in spec else "group"


def _count() -> Any:
    from django.db.models import Count

    return Count("*")


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _close_connection(alias: str) -> None:
    try:
        from django.db import connections

        connections[alias].close()
    except Exception:  # pragma: no cover - closing is best effort
        logger.debug("Closing the mirror's connection failed.", exc_info=True)


# SQL ------------------------------------------------------------------------------------

_MESSAGE_COLUMNS = (
    "message_id", "actor_name", "queue_name", "composition_id", "root_id", "position", "status", "rank",
    "retries", "args_preview", "result_preview", "traceback", "enqueued_ms", "eta_ms", "started_ms",
    "finished_ms", "worker", "updated",
)  # fmt: skip
_COMPOSITION_COLUMNS = (
    "id", "kind", "name", "parent_id", "root_id", "position", "total", "completed", "failed", "cancelled",
    "status", "status_rank", "created", "started", "finished", "updated",
)  # fmt: skip

_sql_cache: dict[tuple[str, str], str] = {}


def supports_upsert(connection: BaseDatabaseWrapper) -> bool:
    """Whether the database runs ``INSERT ... ON CONFLICT ... DO UPDATE ... WHERE``."""
    if connection.vendor == "postgresql":
        return True
    if connection.vendor == "sqlite":
        import sqlite3

        return sqlite3.sqlite_version_info >= (3, 24, 0)
    return False


def _adapt(connection: BaseDatabaseWrapper, value: datetime.datetime | None) -> Any:
    if value is None:
        return None
    from django.conf import settings
    from django.utils import timezone

    if not settings.USE_TZ:
        value = timezone.make_naive(value)
    return connection.ops.adapt_datetimefield_value(value)


def _message_sql(connection: BaseDatabaseWrapper) -> str:
    key = (connection.vendor, "messages")
    if key in _sql_cache:
        return _sql_cache[key]
    from .models.mirror import MessageRecord

    qn = connection.ops.quote_name
    table = qn(MessageRecord._meta.db_table)

    def new(column: str) -> str:
        return f"excluded.{qn(column)}"

    def old(column: str) -> str:
        return f"{table}.{qn(column)}"

    replaced = ("actor_name", "queue_name", "composition_id", "root_id", "position", "status", "rank", "retries",
                "eta_ms", "updated")  # fmt: skip
    sets = [f"{qn(c)} = {new(c)}" for c in replaced]
    sets += [
        f"{qn(c)} = CASE WHEN {new(c)} <> '' THEN {new(c)} ELSE {old(c)} END"
        for c in ("args_preview", "result_preview", "traceback", "worker")
    ]
    sets += [
        f"{qn('enqueued_ms')} = COALESCE({old('enqueued_ms')}, {new('enqueued_ms')})",
        f"{qn('started_ms')} = COALESCE({new('started_ms')}, {old('started_ms')})",
        f"{qn('finished_ms')} = CASE WHEN {new('started_ms')} IS NOT NULL THEN {new('finished_ms')} "
        f"ELSE COALESCE({new('finished_ms')}, {old('finished_ms')}) END",
    ]
    sql = (
        f"INSERT INTO {table} ({', '.join(qn(c) for c in _MESSAGE_COLUMNS)}) "
        f"VALUES ({', '.join(['%s'] * len(_MESSAGE_COLUMNS))}) "
        f"ON CONFLICT ({qn('message_id')}) DO UPDATE SET {', '.join(sets)} "
        f"WHERE {old('rank')} < {new('rank')}"
    )
    _sql_cache[key] = sql
    return sql


def _upsert_messages(
    connection: BaseDatabaseWrapper, rows: list[Event | _Row], now: datetime.datetime, worker: str = ""
) -> None:
    """Write message rows (a lone event or a folded :class:`_Row` each); a row
    only replaces a stored one of lower rank."""
    updated = _adapt(connection, now)
    params = [_event_values(row, worker, updated) if isinstance(row, tuple) else row.values(updated) for row in rows]
    if supports_upsert(connection):
        with connection.cursor() as cursor:
            cursor.executemany(_message_sql(connection), params)
        return
    _upsert_messages_fallback(connection, params)


def _upsert_messages_fallback(connection: BaseDatabaseWrapper, params: list[tuple[Any, ...]]) -> None:
    """For databases without ``ON CONFLICT``: row by row, same guard."""
    from django.db import IntegrityError, transaction

    from .models.mirror import MessageRecord

    manager = MessageRecord.objects.using(connection.alias)
    for values in params:
        fields = dict(zip(_MESSAGE_COLUMNS, values, strict=True))
        message_id, rank = fields.pop("message_id"), fields["rank"]
        for column in ("args_preview", "result_preview", "traceback", "worker"):
            if not fields[column]:
                del fields[column]
        if fields["started_ms"] is None:
            del fields["started_ms"]
        del fields["enqueued_ms"]
        if manager.filter(message_id=message_id, rank__lt=rank).update(**fields):
            continue
        try:
            with transaction.atomic(using=connection.alias):
                manager.create(message_id=message_id, **dict(zip(_MESSAGE_COLUMNS[1:], values[1:], strict=True)))
        except IntegrityError:
            pass  # a row of a higher rank is there already


def _composition_sql(connection: BaseDatabaseWrapper) -> str:
    key = (connection.vendor, "compositions")
    if key in _sql_cache:
        return _sql_cache[key]
    from .models.mirror import Composition

    qn = connection.ops.quote_name
    table = qn(Composition._meta.db_table)

    def new(column: str) -> str:
        return f"excluded.{qn(column)}"

    def old(column: str) -> str:
        return f"{table}.{qn(column)}"

    def larger(column: str) -> str:
        return f"{qn(column)} = CASE WHEN {new(column)} > {old(column)} THEN {new(column)} ELSE {old(column)} END"

    forward = f"{new('status_rank')} >= {old('status_rank')}"
    sets = [
        larger("completed"),
        larger("failed"),
        larger("cancelled"),
        f"{qn('status')} = CASE WHEN {forward} THEN {new('status')} ELSE {old('status')} END",
        f"{qn('status_rank')} = CASE WHEN {forward} THEN {new('status_rank')} ELSE {old('status_rank')} END",
        f"{qn('started')} = COALESCE({old('started')}, {new('started')})",
        f"{qn('finished')} = CASE WHEN {forward} THEN COALESCE({old('finished')}, {new('finished')}) "
        f"ELSE {old('finished')} END",
        f"{qn('name')} = CASE WHEN {old('name')} = '' THEN {new('name')} ELSE {old('name')} END",
        f"{qn('updated')} = {new('updated')}",
    ]
    sql = (
        f"INSERT INTO {table} ({', '.join(qn(c) for c in _COMPOSITION_COLUMNS)}) "
        f"VALUES ({', '.join(['%s'] * len(_COMPOSITION_COLUMNS))}) "
        f"ON CONFLICT ({qn('id')}) DO UPDATE SET {', '.join(sets)}"
    )
    _sql_cache[key] = sql
    return sql


def _upsert_compositions(connection: BaseDatabaseWrapper, rows: list[tuple[Any, ...]]) -> None:
    """Write composition rows; counters and states only move forward."""
    datetime_columns = {_COMPOSITION_COLUMNS.index(c) for c in ("created", "started", "finished", "updated")}
    params = [tuple(_adapt(connection, v) if i in datetime_columns else v for i, v in enumerate(row)) for row in rows]
    if supports_upsert(connection):
        with connection.cursor() as cursor:
            cursor.executemany(_composition_sql(connection), params)
        return

    from .models.mirror import Composition

    manager = Composition.objects.using(connection.alias)
    for values in rows:
        fields = dict(zip(_COMPOSITION_COLUMNS, values, strict=True))
        obj, created = manager.get_or_create(id=fields["id"], defaults={k: v for k, v in fields.items() if k != "id"})
        if created:
            continue
        changes: dict[str, Any] = {"updated": fields["updated"]}
        for column in ("completed", "failed", "cancelled"):
            if fields[column] > getattr(obj, column):
                changes[column] = fields[column]
        if fields["status_rank"] >= obj.status_rank:
            changes.update(status=fields["status"], status_rank=fields["status_rank"])
            if obj.finished is None:
                changes["finished"] = fields["finished"]
        if obj.started is None:
            changes["started"] = fields["started"]
        if not obj.name:
            changes["name"] = fields["name"]
        manager.filter(id=obj.id).update(**changes)


def _add_minutes(connection: BaseDatabaseWrapper, minutes: dict[int, list[int]]) -> None:
    """Add this batch's finished counts to the per-minute rows of the chart."""
    from django.db.models import F

    from .models.mirror import MinuteStat

    params = [(_adapt(connection, _from_ms(minute * 60_000)), ok, bad) for minute, (ok, bad) in minutes.items()]
    if supports_upsert(connection):
        qn = connection.ops.quote_name
        table = qn(MinuteStat._meta.db_table)
        sql = (
            f"INSERT INTO {table} ({qn('minute')}, {qn('succeeded')}, {qn('failed')}) VALUES (%s, %s, %s) "
            f"ON CONFLICT ({qn('minute')}) DO UPDATE SET "
            f"{qn('succeeded')} = {table}.{qn('succeeded')} + excluded.{qn('succeeded')}, "
            f"{qn('failed')} = {table}.{qn('failed')} + excluded.{qn('failed')}"
        )
        with connection.cursor() as cursor:
            cursor.executemany(sql, params)
        return
    manager = MinuteStat.objects.using(connection.alias)
    for minute, (ok, bad) in minutes.items():
        moment = _from_ms(minute * 60_000)
        if not manager.filter(minute=moment).update(succeeded=F("succeeded") + ok, failed=F("failed") + bad):
            manager.create(minute=moment, succeeded=ok, failed=bad)


# Pruning ---------------------------------------------------------------------------------


def prune(older_than: datetime.timedelta, *, using: str | None = None) -> dict[str, int]:
    """Delete mirror rows not updated for ``older_than``.

    A composition tree goes as a whole, once none of its compositions has
    changed for that long; standalone messages and stopped or lost workers go
    by their own age.

    Returns:
      How many compositions, messages and workers were deleted.
    """
    from django.db import router
    from django.db.models import Max
    from django.utils import timezone

    from .models.mirror import Composition, MessageRecord, MinuteStat, WorkerRecord

    alias = using or router.db_for_write(MessageRecord) or "default"
    cutoff = timezone.now() - older_than
    deleted = {"compositions": 0, "messages": 0, "workers": 0}
    stale_roots = list(
        Composition.objects.using(alias)
        .values_list("root_id", flat=True)
        .order_by()
        .annotate(last=Max("updated"))
        .filter(last__lt=cutoff)
    )
    for chunk in _chunks(stale_roots, 500):
        deleted["messages"] += MessageRecord.objects.using(alias).filter(root_id__in=chunk).delete()[0]
        deleted["compositions"] += Composition.objects.using(alias).filter(root_id__in=chunk).delete()[0]
    deleted["messages"] += (
        MessageRecord.objects.using(alias).filter(root_id__isnull=True, updated__lt=cutoff).delete()[0]
    )
    deleted["workers"] += WorkerRecord.objects.using(alias).filter(heartbeat__lt=cutoff).delete()[0]
    MinuteStat.objects.using(alias).filter(minute__lt=cutoff).delete()
    return deleted


# Admin operations -------------------------------------------------------------------------


@dataclasses.dataclass
class RetryReport:
    """What :func:`retry_messages` did, by message or composition id."""

    requeued: list[str] = dataclasses.field(default_factory=list)
    #: No longer in the broker's dead letters (purged or expired): left as they were.
    missing: list[str] = dataclasses.field(default_factory=list)
    #: The broker raised (logged); left as they were.
    errors: list[str] = dataclasses.field(default_factory=list)
    reopened: list[str] = dataclasses.field(default_factory=list)


def _mirror_alias(using: str | None) -> str:
    if using:
        return using
    from django.db import router

    from .models.mirror import MessageRecord

    return router.db_for_write(MessageRecord) or "default"


def retry_messages(
    message_ids: Iterable[str], *, broker: Broker | None = None, using: str | None = None
) -> RetryReport:
    """Put failed (dead-lettered) messages back on their queues, and reopen
    the compositions that failed because of them.

    Each message is requeued unchanged by the broker (same id, arguments and
    retry count), so it runs once more under its actor's retry policy. A
    composition is reopened (its failure marks cleared in the results
    backend, so its pipeline goes on and its group completes, callbacks
    included, once the messages succeed) when every failed message under it
    is being retried; otherwise it stays failed, so nobody waits on it
    forever.

    Parameters:
      message_ids: ids of mirrored messages; those not failed are ignored.
      broker: the broker; the global one when ``None``.
      using: the mirror's database alias (the router's choice by default).

    Returns:
      Which messages were requeued, which were no longer in the dead
      letters, and which compositions were reopened.
    """
    from .broker import get_broker
    from .models.mirror import COMPOSITION_RANK, Composition, MessageRecord

    broker = broker or get_broker()
    alias = _mirror_alias(using)
    messages = MessageRecord.objects.using(alias)
    records = list(messages.filter(pk__in=list(message_ids), status="failed"))
    report = RetryReport()
    if not records:
        return report
    report.reopened = _reopen_compositions(broker, records, alias)
    for record in records:
        # The mirror first, back to the start of the failed attempt: the
        # requeued message's events must find a lower rank than theirs.
        reset_rank = record.retries * RANK_STRIDE
        moved = messages.filter(pk=record.pk, rank=record.rank).update(
            status="enqueued", rank=reset_rank, finished_ms=None, updated=_now()
        )
        if not moved:
            continue  # it changed meanwhile: someone else retried it
        try:
            requeued = broker.requeue_dead_letters([record.pk])
        except Exception:
            logger.exception("Could not requeue dead letter %s.", record.pk)
            requeued = -1
        if requeued > 0:
            report.requeued.append(record.pk)
            continue
        messages.filter(pk=record.pk, rank=reset_rank).update(
            status="failed", rank=record.rank, finished_ms=record.finished_ms
        )
        (report.missing if requeued == 0 else report.errors).append(record.pk)
    if report.reopened:
        Composition.objects.using(alias).filter(pk__in=report.reopened).update(
            status="running", status_rank=COMPOSITION_RANK["running"], finished=None, failed=0, updated=_now()
        )
    return report


def _now() -> datetime.datetime:
    from django.utils import timezone

    return timezone.now()


def _reopen_compositions(broker: Broker, records: list[Any], alias: str) -> list[str]:
    """Clear the failure marks (in the results backend) of the compositions
    that failed because of these messages, and only of them."""
    from .composition import CANCELLED, _key
    from .models.mirror import Composition, MessageRecord

    roots = {record.root_id for record in records if record.root_id}
    if not roots or not broker.has_results_backend():
        return []
    retried = {record.pk for record in records}
    parents = dict(Composition.objects.using(alias).filter(root_id__in=roots).values_list("pk", "parent_id"))
    failed_under: dict[str, set[str]] = {}
    failed = MessageRecord.objects.using(alias).filter(root_id__in=roots, status="failed")
    for pk, composition_id in failed.values_list("pk", "composition_id"):
        current: str | None = composition_id
        seen: set[str] = set()
        while current and current not in seen:  # every enclosing composition
            seen.add(current)
            failed_under.setdefault(current, set()).add(pk)
            current = parents.get(current)
    candidates = sorted({cid for cid, under in failed_under.items() if under & retried})
    if not candidates:
        return []
    backend = broker.get_results_backend()
    ends = backend._get_many([_key(backend, cid, "end") for cid in candidates])
    reopened = []
    for cid, end in zip(candidates, ends, strict=True):
        error = end.get("e") if isinstance(end, dict) else None
        if error and error.get("type") != CANCELLED and failed_under[cid] <= retried:
            reopened.append(cid)
    if reopened:
        marks = ("end", "failed", "claim:fail", "did:fail")
        backend._delete_many([_key(backend, cid, mark) for cid in reopened for mark in marks])
    return reopened


def cancel_composition(composition_id: str, *, broker: Broker | None = None, using: str | None = None) -> bool:
    """Cancel a composition through the results backend, and mark it, its
    ancestors and the compositions nested in it cancelled in the mirror.

    Members not started yet are skipped when a worker gets to them; running
    ones finish. See :func:`django_actors.composition.cancel`.

    Returns:
      ``False`` when it had already finished, failed or been cancelled.

    Raises:
      CompositionNotFound: the results backend no longer knows it.
    """
    from .broker import get_broker
    from .composition import cancel
    from .models.mirror import COMPOSITION_RANK, FINAL_COMPOSITION_STATES, Composition

    broker = broker or get_broker()
    rows = Composition.objects.using(_mirror_alias(using))
    done = cancel(composition_id, broker=broker)
    composition = rows.filter(pk=composition_id).first()
    if composition is None:
        return done
    parents = dict(rows.filter(root_id=composition.root_id).values_list("pk", "parent_id"))
    affected = {composition_id}
    grew = True
    while grew:  # every composition nested in it
        below = {pk for pk, up in parents.items() if up in affected and pk not in affected}
        affected |= below
        grew = bool(below)
    parent = composition.parent_id
    while parent and parent in parents and parent not in affected:  # and every enclosing one
        affected.add(parent)
        parent = parents[parent]
    rows.filter(pk__in=affected).exclude(status__in=FINAL_COMPOSITION_STATES).update(
        status="cancelled", status_rank=COMPOSITION_RANK["cancelled"], finished=_now(), updated=_now()
    )
    return done
