"""Chaos tests: 5,000 messages (plain messages, pipelines, groups with
completion callbacks, groups inside pipelines, pipelines inside groups)
through real worker processes that are SIGKILLed several times, and, for the
Redis broker, while its redis-server (AOF on, fsync always) is restarted
twice: once with SIGTERM and once killed with SIGKILL.

What must hold, checked from an observation channel the chaos does not touch
(the session's redis-server, where every actor run is counted, see
``tests.chaos_worker``):

- every message was processed at least once (lost = 0);
- every pipeline completed, with every step's result;
- every group's completion callback fired exactly once: one enqueued
  callback message per group (a redelivery of that one message after a
  SIGKILL may run it twice, which is at-least-once delivery, not a second
  firing), although every member of the 150 plain groups is enqueued twice
  on purpose, the copies racing each other through the group's completion;
- no result was lost: every stored result is there and right;
- no dead letter, and the queue is empty at the end.

Each test prints a line with the figures (run with ``-s``): messages sent,
distinct processed, runs, duplicates, lost, and what the killed workers held.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from django_actors import group, pipeline
from django_actors.errors import ConnectionClosed, QueueJoinTimeout
from django_actors.message import Message
from django_actors.middleware.middleware import Middleware
from django_actors.results.errors import ResultError

from .chaos_worker import RUNS, build_broker, callback_tags_key, declare_actors
from .redis_helpers import RedisProcess, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parent.parent
QUEUE = "chaos"
TOTAL = 5_000


# The workload --------------------------------------------------------------------------


@dataclass
class Workload:
    """What was sent, and what must have happened."""

    plain: list[Message[Any]] = field(default_factory=list)
    pipelines: list[tuple[pipeline, list[int]]] = field(default_factory=list)
    groups: list[tuple[str, group, list[int]]] = field(default_factory=list)
    chords: list[tuple[pipeline, int]] = field(default_factory=list)
    units: set[str] = field(default_factory=set)
    #: Messages enqueued a second time on purpose (same message, same id).
    duplicates: int = 0

    @property
    def messages(self) -> int:
        return len(self.units)


def send_workload(broker: Any) -> Workload:
    """Send 5,000 messages: 2,000 plain; 300 pipelines of 3 steps; 150 groups
    of 10 with a completion callback, each member enqueued twice (1,500
    duplicates on purpose); 50 pipelines of a group of 4 and a step receiving
    the group's results; 40 groups of 2 two-step pipelines with a completion
    callback."""
    actors = declare_actors(broker, QUEUE)
    work = Workload()
    work.plain = broker.enqueue_many([actors.record.message(n) for n in range(2_000)])
    work.units |= {f"r{n}" for n in range(2_000)}
    for p in range(300):
        steps = [actors.step.message(str(p), 0), actors.step.message(str(p)), actors.step.message(str(p))]
        pipe = pipeline(steps, broker=broker)
        work.pipelines.append((pipe.run(), [1, 2, 3]))
        work.units |= {f"p{p}s{i}" for i in range(3)}
    sent = Sent()
    broker.add_middleware(sent)
    for g in range(150):
        members = group([actors.member.message(str(g), i) for i in range(10)], broker=broker)
        members.add_completion_callback(actors.group_done.message(str(g)))
        work.groups.append((str(g), members.run(), [i * i for i in range(10)]))
        work.units |= {f"g{g}m{i}" for i in range(10)} | {f"cb{g}"}
        # Every member delivered twice, right away: the second copy races the
        # first through the group's completion (the callback must still fire once).
        work.duplicates += len(broker.enqueue_many(sent.take()))
        sent.take()  # the copies themselves
    sent.active = False
    for c in range(50):
        members = group([actors.member.message(f"c{c}", i) for i in range(4)], broker=broker)
        chord = pipeline([members, actors.total.message(str(c))], broker=broker)
        work.chords.append((chord.run(), sum(i * i for i in range(4))))
        work.units |= {f"gc{c}m{i}" for i in range(4)} | {f"t{c}"}
    for q in range(40):
        pipes = [
            pipeline([actors.step.message(f"q{q}{side}", 0), actors.step.message(f"q{q}{side}")], broker=broker)
            for side in "ab"
        ]
        both = group(pipes, broker=broker)
        both.add_completion_callback(actors.group_done.message(f"q{q}"))
        work.groups.append((f"q{q}", both.run(), [2, 2]))
        work.units |= {f"pq{q}{side}s{i}" for side in "ab" for i in range(2)} | {f"cbq{q}"}
    assert work.messages == TOTAL
    return work


class Sent(Middleware):
    """Remembers what the sending process enqueued since the last ``take()``."""

    def __init__(self) -> None:
        self.messages: list[Message[Any]] = []
        self.active = True

    def after_enqueue(self, broker: Any, message: Message[Any], delay: int | None) -> None:
        if self.active:
            self.messages.append(message)

    def take(self) -> list[Message[Any]]:
        taken, self.messages = self.messages, []
        return taken


# Worker processes ---------------------------------------------------------------------


class ChaosWorker:
    """A ``tests.chaos_worker`` process; its log is in ``log``."""

    def __init__(self, config: dict[str, Any], log: Path) -> None:
        env = {**os.environ, "CHAOS_CONFIG": json.dumps(config), "PYTHONPATH": str(REPO_ROOT)}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        self.log = log
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(  # noqa: S603 - our interpreter, our module
            [sys.executable, "-m", "tests.chaos_worker"],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.proc.kill()
            raise AssertionError(f"chaos worker did not start ({line!r}):\n{log.read_text()}")
        self.pid = self.proc.pid

    def kill(self, sig: int = signal.SIGKILL) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log_file.close()
        return code


class Pool:
    """Two worker processes, replaced one at a time when killed."""

    def __init__(self, config: dict[str, Any], directory: Path, size: int = 2) -> None:
        self.config = config
        self.directory = directory
        self.started = 0
        self.workers = [self._start() for _ in range(size)]
        self.kills = 0

    def _start(self) -> ChaosWorker:
        self.started += 1
        return ChaosWorker(self.config, self.directory / f"worker-{self.started}.log")

    def kill_one(self, then: Callable[[ChaosWorker], Any] = lambda victim: None) -> Any:
        """SIGKILL the oldest worker, call ``then(victim)`` at once (before its
        messages can be redelivered), start a new worker; returns what ``then`` did."""
        victim = self.workers.pop(0)
        assert victim.proc.poll() is None, f"worker {victim.pid} died by itself:\n{victim.log.read_text()}"
        assert victim.kill() == -signal.SIGKILL
        self.kills += 1
        found = then(victim)
        self.workers.append(self._start())
        return found

    def stop(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                assert worker.kill(signal.SIGTERM) == 0, worker.log.read_text()

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()

    def logs(self) -> str:
        """The workers' log lines (tracebacks left out), for a failure report."""
        lines = []
        for path in sorted(self.directory.glob("worker-*.log")):
            lines += [line[:300] for line in path.read_text().splitlines() if line.startswith("[worker")]
        return "\n".join(lines[-200:])


def run_chaos(progress: Callable[[], int], events: list[tuple[float, Callable[[], None]]]) -> int:
    """Fire each event once ``progress()`` (distinct units processed) reaches
    its fraction of the total. Returns how many fired: when progress stalls,
    the rest are skipped and :func:`check` reports what is missing."""
    fired = 0
    for fraction, action in events:
        try:
            wait_for(lambda f=fraction: progress() >= f * TOTAL, 60, interval=0.02, what=f"{fraction:.0%} processed")
        except AssertionError as exc:
            print(f"\nstalled: {exc}")
            break
        action()
        fired += 1
    return fired


def finish(progress: Callable[[], int], join: Callable[[], None], timeout: float = 90) -> None:
    """Wait for every unit to be processed and the queue to drain; on a
    timeout, carry on to :func:`check`, which reports what is missing."""
    try:
        wait_for(lambda: progress() >= TOTAL, timeout, interval=0.05, what="every message processed")
        join()
    except (AssertionError, QueueJoinTimeout) as exc:
        print(f"\nnot finished: {exc}")


# Checking ----------------------------------------------------------------------------


def outcome(get: Callable[[], Any]) -> Any:
    """What a composition's result getter returns, or the error it raises."""
    try:
        return get()
    except ResultError as exc:
        return exc


def check(work: Workload, backend: Any, recorder: redis.Redis, label: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Assert every guarantee; return the figures."""
    runs = {key.decode(): int(value) for key, value in recorder.hgetall(RUNS).items()}
    lost = sorted(work.units - set(runs))
    unexpected = sorted(set(runs) - work.units)
    duplicates = sum(runs.values()) - len(runs)

    records = backend._get_many([backend.build_message_key(m) for m in work.plain])
    missing_results = [m.args[0] for m, record in zip(work.plain, records, strict=True) if record is None]
    wrong_results = [
        m.args[0] for m, record in zip(work.plain, records, strict=True) if record and record.get("r") != m.args[0] * 3
    ]
    pipelines_incomplete = [p.id for p, expected in work.pipelines if outcome(p.get_results) != expected]
    chords_incomplete = [c.id for c, expected in work.chords if outcome(c.get_result) != expected]
    groups_incomplete = [name for name, g, expected in work.groups if outcome(g.get_results) != expected]
    fired = {name: int(recorder.scard(callback_tags_key(name))) for name, _, _ in work.groups}
    not_once = {name: n for name, n in fired.items() if n != 1}
    callback_runs = sum(runs.get(f"cb{name}", 0) for name in fired)

    figures = {
        "test": label,
        "sent": work.messages,
        "duplicates_sent": work.duplicates,
        "processed": len(runs),
        "runs": sum(runs.values()),
        "duplicated": duplicates,
        "duplicated_by_faults": duplicates - work.duplicates,
        "lost": len(lost),
        "pipelines": len(work.pipelines) + len(work.chords),
        "groups": len(work.groups),
        "callbacks_fired": sum(fired.values()),
        "callback_runs": callback_runs,
        "results_missing": len(missing_results) + len(wrong_results),
        "compositions_incomplete": len(pipelines_incomplete) + len(chords_incomplete) + len(groups_incomplete),
        **extra,
    }
    print(f"\nCHAOS {json.dumps(figures)}")
    if lost:
        print(f"lost: {lost[:50]}")
    assert not lost, f"{len(lost)} message(s) never processed: {lost[:20]}"
    assert not unexpected, f"units nobody sent were run: {unexpected[:20]}"
    assert not missing_results and not wrong_results, (missing_results[:20], wrong_results[:20])
    assert not pipelines_incomplete and not chords_incomplete, (pipelines_incomplete[:5], chords_incomplete[:5])
    assert not groups_incomplete, groups_incomplete[:5]
    assert not not_once, f"completion callbacks not fired exactly once: {not_once}"
    return figures


@pytest.fixture
def recorder(redis_client: redis.Redis) -> redis.Redis:
    """The observation channel: the session's redis-server, flushed."""
    return redis_client


# Redis -------------------------------------------------------------------------------------


@pytest.fixture
def chaos_redis() -> Iterator[RedisProcess]:
    """A redis-server of the test's own (AOF, fsync always) on tmpfs when there is one."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="django_actors_chaos_", dir=base) as directory:
        server = RedisProcess(Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()


def reconnecting(call: Callable[[], Any]) -> Any:
    """``call()``, again once if it hit a connection that a Redis restart closed."""
    try:
        return call()
    except ConnectionClosed:
        return call()


def crash_and_restart(server: RedisProcess) -> None:
    """SIGKILL redis-server (no shutdown, only its AOF survives) and start it again."""
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait(10)
    server.proc = None
    server.start()


@pytest.mark.redis
def test_redis_broker_survives_sigkills_and_redis_restarts(chaos_redis, recorder, redis_url, tmp_path):
    config = {"broker": "redis", "url": chaos_redis.url, "record_url": redis_url, "queue": QUEUE}
    config |= {"threads": 4, "heartbeat_timeout": 1000}
    broker = build_broker(config)
    backend = broker.get_results_backend()
    work = send_workload(broker)
    pool = Pool(config, tmp_path)
    held: list[int] = []

    def kill() -> None:
        # What the dead worker held: still in its ack set.
        held.append(pool.kill_one(lambda victim: reconnecting(lambda: broker.stats(QUEUE).in_flight)))

    started = time.monotonic()
    try:
        fired = run_chaos(
            lambda: int(recorder.hlen(RUNS)),
            [
                (0.08, kill),
                (0.20, lambda: chaos_redis.restart(down_for=0.5)),
                (0.35, kill),
                (0.50, kill),
                (0.62, lambda: crash_and_restart(chaos_redis)),
                (0.75, kill),
            ],
        )
        if fired == 6:
            finish(lambda: int(recorder.hlen(RUNS)), lambda: reconnecting(lambda: broker.join(QUEUE, timeout=30_000)))
        elapsed = time.monotonic() - started
        pool.stop()
        figures = check(
            work,
            backend,
            recorder,
            "redis",
            {"kills": pool.kills, "redis_restarts": 2, "held_at_kills": held, "seconds": round(elapsed, 1)},
        )
        assert figures["kills"] == 4
        assert sum(held) > 0, "the killed workers held no message: the test proved nothing"
        assert broker.dead_letters() == []
        stats = broker.stats(QUEUE)
        assert (stats.ready, stats.delayed, stats.in_flight) == (0, 0, 0)
    except BaseException:
        print(pool.logs())
        raise
    finally:
        pool.close()
        broker.close()


# Database ------------------------------------------------------------------------------------


def connections_vendor(alias: str) -> str:
    from django.db import connections

    return str(connections[alias].vendor)


def database_settings(alias: str) -> dict[str, Any]:
    """The connection settings of ``alias`` (the test database) for a worker process."""
    from django.db import connections

    settings = dict(connections[alias].settings_dict)
    database = {key: settings[key] for key in ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT")}
    database["NAME"] = str(database["NAME"])
    if database["ENGINE"].endswith("sqlite3"):
        database["OPTIONS"] = {"timeout": 30}
    return database


def test_database_broker_survives_sigkills(db_alias, recorder, redis_url, tmp_path):
    from django_actors.models import MessageState, QueuedMessage

    config = {"broker": "database", "database": database_settings(db_alias), "record_url": redis_url}
    config |= {"queue": QUEUE, "threads": 4, "heartbeat_timeout": 1000}
    broker = build_broker({**config, "using": db_alias})
    backend = broker.get_results_backend()
    work = send_workload(broker)
    pool = Pool(config, tmp_path)
    held: list[int] = []
    rows = QueuedMessage.objects.using(db_alias)

    def kill() -> None:
        claims = rows.filter(state=MessageState.CLAIMED)
        held.append(pool.kill_one(lambda victim: claims.filter(claimed_by__contains=f":{victim.pid}:").count()))

    started = time.monotonic()
    try:
        fired = run_chaos(lambda: int(recorder.hlen(RUNS)), [(0.1, kill), (0.3, kill), (0.5, kill), (0.7, kill)])
        if fired == 4:
            finish(lambda: int(recorder.hlen(RUNS)), lambda: broker.join(QUEUE, timeout=30_000))
        elapsed = time.monotonic() - started
        pool.stop()
        figures = check(
            work,
            backend,
            recorder,
            "database-" + connections_vendor(db_alias),
            {"kills": pool.kills, "held_at_kills": held, "seconds": round(elapsed, 1)},
        )
        assert figures["kills"] == 4
        assert sum(held) > 0, "the killed workers held no message: the test proved nothing"
        assert broker.dead_letter_count() == 0
        assert not rows.exclude(state=MessageState.DONE).exists()
    except BaseException:
        print(pool.logs())
        raise
    finally:
        pool.close()
        broker.close()


@pytest.mark.redis
def test_a_hand_back_that_fails_during_an_outage_is_done_once_redis_answers(chaos_redis):
    """The worker hands a message back (a hook lost its connection) while
    Redis is down: the message must not stay with the live worker forever."""
    from django_actors.brokers.redis import RedisBroker

    broker = RedisBroker(url=chaos_redis.url, middleware=[], heartbeat_timeout=60_000)
    try:
        broker.declare_queue(QUEUE)
        sent = broker.enqueue(Message(queue_name=QUEUE, actor_name="x", args=(), kwargs={}, options={}))
        consumer = broker.consume(QUEUE, prefetch=4, timeout=100)
        [proxy] = consumer.fetch(1)
        chaos_redis.stop()
        with pytest.raises(ConnectionClosed):
            consumer.requeue([proxy])
        chaos_redis.start()
        again = wait_for(lambda: reconnecting(lambda: consumer.fetch(1)), 10, what="the message handed back")
        assert [p.message_id for p in again] == [sent.message_id]
        consumer.ack(again[0])
        broker.join(QUEUE, timeout=5_000)
    finally:
        broker.close()


@pytest.mark.redis
def test_a_group_callback_enqueued_twice_runs_once_and_a_redelivery_runs_again(redis_url):
    """What a take-over after a crash between enqueueing a group's callback
    and recording it does: enqueue the callback again. That second enqueue
    must not run; a redelivery of the first (same broker handle) must."""
    from django_actors import actor
    from django_actors.broker import MessageProxy
    from django_actors.composition import CALLBACK_OPTION, check_cancelled
    from django_actors.middleware.middleware import SkipMessage
    from django_actors.worker import Worker

    broker = build_broker({"broker": "redis", "url": redis_url, "heartbeat_timeout": 1000})
    sent = Sent()
    broker.add_middleware(sent)
    fired: list[str] = []

    @actor(broker=broker, queue_name=QUEUE, actor_name="cb_member")
    def cb_member(i: int) -> int:
        return i

    @actor(broker=broker, queue_name=QUEUE, actor_name="cb_done")
    def cb_done(tag: str) -> None:
        fired.append(tag)

    members = group([cb_member.message(i) for i in range(3)], broker=broker)
    members.add_completion_callback(cb_done.message("done"))
    members.run()
    worker = Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        wait_for(lambda: fired == ["done"], 10, what="the callback")
        [callback] = [m for m in sent.take() if m.actor_name == "cb_done"]
        assert callback.options[CALLBACK_OPTION] == members.id
        broker.enqueue(callback)  # enqueued a second time, as a take-over would
        broker.join(QUEUE, timeout=10_000)
        assert fired == ["done"]
    finally:
        worker.stop()
    # The claim is per broker handle: the same handle (a redelivery) passes, another is skipped.
    first = MessageProxy(callback.copy(options={**callback.options, CALLBACK_OPTION: "g-1"}), tag="0001:0")
    check_cancelled(broker, first)
    check_cancelled(broker, MessageProxy(first.message, tag="0001:0"))
    with pytest.raises(SkipMessage, match="already ran"):
        check_cancelled(broker, MessageProxy(first.message, tag="0002:0"))
    broker.close()
