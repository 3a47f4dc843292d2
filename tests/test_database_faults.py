"""Delivery guarantees of the database broker with real worker processes,
on SQLite and on PostgreSQL: SIGKILL loses nothing, SIGTERM hands back, and
several processes never run a message twice in the normal case.

Each worker is a subprocess running a small script: ``django.setup()`` on
the test database, a DatabaseBroker with a short heartbeat timeout, and an
actor that records the number it processed (and its pid) in a table.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

from django_actors.brokers.database import DatabaseBroker
from django_actors.message import Message
from django_actors.models import MessageState, QueuedMessage, WorkerHeartbeat

pytestmark = pytest.mark.chaos

REPO_ROOT = Path(__file__).resolve().parent.parent
QUEUE = "faults"

WORKER_SCRIPT = """
import json, os, signal, sys, threading, time

import django
from django.conf import settings

config = json.loads(os.environ["FAULT_CONFIG"])
settings.configure(
    DATABASES={"default": config["database"]},
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django_actors"],
    USE_TZ=True,
    DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    DJANGO_ACTORS={"RESULTS": None, "DISCOVER": []},
)
django.setup()

from django.db import connection

from django_actors import actor
from django_actors.broker import default_middleware
from django_actors.brokers.database import DatabaseBroker
from django_actors.worker import Worker

broker = DatabaseBroker(
    middleware=default_middleware(),
    heartbeat_timeout=config["heartbeat_timeout"],
    poll_interval=20,
)


@actor(broker=broker, actor_name="record", queue_name=config["queue"])
def record(n):
    time.sleep(config["work_seconds"])
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO fault_log (n, pid) VALUES (%s, %s)", [n, os.getpid()])


stopping = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopping.set())
worker = Worker(broker, worker_threads=config["threads"], worker_timeout=100, prefetch=config["prefetch"])
worker.start()
stopping.wait()
worker.stop(timeout=30_000)
broker.close()
print("stopped cleanly", flush=True)
"""


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.02)


class WorkerProcess:
    """A worker subprocess on the test database."""

    def __init__(self, script: Path, config: dict[str, Any], log: Path) -> None:
        env = {**os.environ, "FAULT_CONFIG": json.dumps(config), "PYTHONPATH": str(REPO_ROOT)}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        self.log = log
        self._output = log.open("w")
        self.proc = subprocess.Popen(  # noqa: S603 - our interpreter, our script
            [sys.executable, str(script)], cwd=REPO_ROOT, env=env, stdout=self._output, stderr=subprocess.STDOUT
        )
        self.pid = self.proc.pid

    def output(self) -> str:
        return self.log.read_text()

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._output.close()
        return code


class FaultBench:
    """The test's view: enqueue numbers, start workers, read the log table."""

    def __init__(self, alias: str, tmp_path: Path) -> None:
        self.alias = alias
        self.tmp_path = tmp_path
        self.script = tmp_path / "worker.py"
        self.script.write_text(WORKER_SCRIPT)
        self.broker = DatabaseBroker(middleware=[], using=alias, poll_interval=20)
        self.broker.declare_queue(QUEUE)
        self.workers: list[WorkerProcess] = []
        with connections[alias].cursor() as cursor:
            cursor.execute("CREATE TABLE fault_log (n integer NOT NULL, pid integer NOT NULL)")

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        with connections[self.alias].cursor() as cursor:
            cursor.execute("DROP TABLE fault_log")
        self.broker.close()

    def enqueue(self, count: int) -> list[Message[Any]]:
        return self.broker.enqueue_many(
            [Message(queue_name=QUEUE, actor_name="record", args=(n,), kwargs={}, options={}) for n in range(count)]
        )

    def start(
        self, *, threads: int = 4, work_seconds: float = 0.01, heartbeat_timeout: int = 1_000, wait: bool = True
    ) -> WorkerProcess:
        settings = dict(connections[self.alias].settings_dict)
        database = {key: settings[key] for key in ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT")}
        database["NAME"] = str(database["NAME"])
        if database["ENGINE"].endswith("sqlite3"):
            database["OPTIONS"] = {"timeout": 20}
        config = {
            "database": database,
            "queue": QUEUE,
            "threads": threads,
            "prefetch": threads * 2,
            "work_seconds": work_seconds,
            "heartbeat_timeout": heartbeat_timeout,
        }
        worker = WorkerProcess(self.script, config, self.tmp_path / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: WorkerProcess) -> None:
        """Wait until the worker consumes (its heartbeat row exists)."""
        wait_until(
            lambda: worker.proc.poll() is not None or self.heartbeat(worker) is not None,
            what=f"worker {worker.pid} heartbeat",
        )
        assert worker.proc.poll() is None, worker.output()

    def heartbeat(self, worker: WorkerProcess) -> WorkerHeartbeat | None:
        found: WorkerHeartbeat | None = WorkerHeartbeat.objects.using(self.alias).filter(pid=worker.pid).first()
        return found

    def log(self) -> list[tuple[int, int]]:
        with connections[self.alias].cursor() as cursor:
            cursor.execute("SELECT n, pid FROM fault_log")
            return [(int(n), int(pid)) for n, pid in cursor.fetchall()]

    def processed(self) -> int:
        with connections[self.alias].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM fault_log")
            return int(cursor.fetchone()[0])

    def pending(self) -> int:
        return self.broker.pending_count(QUEUE)


@pytest.fixture
def bench(db_alias: str, tmp_path: Path) -> Iterator[FaultBench]:
    bench = FaultBench(db_alias, tmp_path)
    yield bench
    bench.close()


def test_sigkilled_worker_loses_nothing(bench: FaultBench) -> None:
    total = 150
    messages = bench.enqueue(total)
    number_of = {m.message_id: m.args[0] for m in messages}
    first = bench.start(threads=4, work_seconds=0.02)
    wait_until(lambda: bench.processed() >= 20, what="first worker progress")
    assert first.kill(signal.SIGKILL) == -signal.SIGKILL
    claimed = list(QueuedMessage.objects.using(bench.alias).filter(state=MessageState.CLAIMED))
    assert claimed, "the killed worker held no claim: the test proves nothing"
    assert {row.claimed_by for row in claimed} == {bench.heartbeat(first).worker_id}  # type: ignore[union-attr]
    orphans = {number_of[row.message_id] for row in claimed}

    second = bench.start(threads=4, work_seconds=0.0)
    wait_until(lambda: bench.pending() == 0, what="queue drained by the second worker")
    log = bench.log()
    assert {n for n, _ in log} == set(range(total)), second.output()
    # What the dead worker held came back and was run by the new one.
    assert orphans <= {n for n, pid in log if pid == second.pid}
    assert second.kill(signal.SIGTERM) == 0, second.output()
    assert "stopped cleanly" in second.output()
    assert bench.heartbeat(second) is None  # a clean stop removes its heartbeat
    assert not QueuedMessage.objects.using(bench.alias).exists()


def test_sigterm_finishes_running_messages_and_hands_back_the_rest(bench: FaultBench) -> None:
    total = 40
    bench.enqueue(total)
    first = bench.start(threads=2, work_seconds=0.1)
    wait_until(lambda: bench.processed() >= 4, what="first worker progress")
    assert first.kill(signal.SIGTERM) == 0, first.output()
    done_by_first = bench.processed()
    assert done_by_first < total
    rows = QueuedMessage.objects.using(bench.alias)
    assert not rows.filter(state=MessageState.CLAIMED).exists()  # nothing left claimed
    assert rows.filter(state=MessageState.QUEUED).count() == total - done_by_first
    assert bench.heartbeat(first) is None

    second = bench.start(threads=4, work_seconds=0.0)
    wait_until(lambda: bench.pending() == 0, what="queue drained by the second worker")
    numbers = sorted(n for n, _ in bench.log())
    assert numbers == list(range(total))  # each exactly once: nothing lost, nothing run twice
    assert second.kill(signal.SIGTERM) == 0, second.output()


def test_several_processes_share_a_queue_without_running_a_message_twice(bench: FaultBench) -> None:
    total = 300
    # A generous heartbeat: this test is about claims, not about reaping a
    # worker whose heartbeat a loaded machine delayed (which may legitimately
    # run a message twice: delivery is at least once).
    workers = [
        bench.start(threads=4, work_seconds=0.01, wait=False, heartbeat_timeout=15_000) for _ in range(3)
    ]
    for worker in workers:
        bench.wait_ready(worker)
    bench.enqueue(total)
    wait_until(lambda: bench.pending() == 0, what="queue drained")
    log = bench.log()
    assert sorted(n for n, _ in log) == list(range(total))
    assert len({pid for _, pid in log}) >= 2  # they really shared the work
    for worker in workers:
        assert worker.kill(signal.SIGTERM) == 0, worker.output()
