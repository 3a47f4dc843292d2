"""``manage.py runworkers`` as a real subprocess, on a real Redis broker.

The actors live in ``tests/apps/workerapp/actors.py`` and report what they do
to a Redis list; the processes run with ``tests/subprocess_settings.py``.
"""

from __future__ import annotations

import contextlib
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
import redis

from django_actors.brokers.redis import RedisBroker
from django_actors.message import Message
from django_actors.supervisor import EXIT_CONFIG
from tests.apps.workerapp import EVENTS

pytestmark = [pytest.mark.redis, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout}s waiting for {what}.")
        time.sleep(0.05)


def children_of(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return set()
    return {int(item) for item in text.split()}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def live_in_session(sid: int) -> list[int]:
    """The pids of the live (non-zombie) processes of session ``sid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        # fields: state, ppid, pgrp, session, ...
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


class Workers:
    """A ``runworkers`` subprocess in its own session, with its output in files."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        self.proc = proc
        self.out = out
        self.err = err

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def children(self) -> set[int]:
        return children_of(self.pid)

    def wait_ready(self, processes: int, timeout: float = 30.0) -> set[int]:
        """Wait until ``processes`` worker processes logged that they are ready."""
        def ready() -> set[int] | None:
            assert self.proc.poll() is None, f"runworkers exited early:\n{self.stderr()}"
            found = {int(line.split("Worker process ")[1].split()[0])
                     for line in self.stderr().splitlines() if "is ready." in line}
            live = found & self.children()
            return live if len(live) >= processes else None
        return wait_for(ready, f"{processes} ready worker process(es)", timeout)  # type: ignore[no-any-return]

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"runworkers still running after {timeout}s:\n{self.stderr()}") from None


@pytest.fixture
def start_workers(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Workers]]:
    started: list[Workers] = []

    def start(*args: str, env: dict[str, str] | None = None, reload: bool = False) -> Workers:
        environ = {
            **os.environ,
            "DJANGO_ACTORS_TEST_REDIS_URL": redis_url,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        environ.pop("DJANGO_SETTINGS_MODULE", None)
        index = len(started)
        out, err = tmp_path / f"out{index}.txt", tmp_path / f"err{index}.txt"
        command = [sys.executable, "-m", "django", "runworkers", "--settings", "tests.subprocess_settings", *args]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                command, cwd=REPO, env=environ, stdout=stdout, stderr=stderr, start_new_session=True
            )
        workers = Workers(proc, out, err)
        started.append(workers)
        return workers

    yield start
    for workers in started:
        # Whatever a test left running: kill the whole session, then wait.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(workers.pid, signal.SIGKILL)
        workers.proc.wait(10)


@pytest.fixture
def broker(redis_url: str) -> Iterator[RedisBroker]:
    broker = RedisBroker(url=redis_url, middleware=[])
    yield broker
    broker.close()


@pytest.fixture
def events(redis_client: redis.Redis) -> Callable[[], list[str]]:
    def read() -> list[str]:
        return [item.decode() for item in redis_client.lrange(EVENTS, 0, -1)]

    return read


def send(broker: RedisBroker, actor_name: str, *args: Any, queue_name: str = "alpha") -> Message[Any]:
    message: Message[Any] = Message(queue_name=queue_name, actor_name=actor_name, args=args, kwargs={}, options={})
    return broker.enqueue(message)


def tagged(events: list[str], what: str, tag: str) -> list[str]:
    return [event for event in events if event.startswith(f"{what}:{tag}:")]


def test_processes_messages_in_several_processes_and_restarts_them_on_sighup(start_workers, broker, events):
    workers = start_workers("--processes", "2", "--threads", "2", "--shutdown-timeout", "5")
    first = workers.wait_ready(2)
    for index in range(20):
        send(broker, "record", f"m{index}")
    done = wait_for(lambda: (d if len(d := [e for e in events() if e.startswith("done:")]) >= 20 else None),
                    "20 messages processed")
    assert sorted(event.split(":")[1] for event in done) == sorted(f"m{index}" for index in range(20))
    assert {int(event.split(":")[2]) for event in done} <= first

    workers.signal(signal.SIGHUP)
    second = wait_for(lambda: (workers.children() - first if len(workers.children() - first) == 2
                               and not workers.children() & first else None),
                      "two new worker processes replacing the old ones")
    assert all(not alive(pid) for pid in first)
    send(broker, "record", "after-hup")
    hup_done = wait_for(lambda: tagged(events(), "done", "after-hup"), "a message processed after SIGHUP")
    assert int(hup_done[0].split(":")[2]) in second

    workers.signal(signal.SIGTERM)
    assert workers.wait(15) == 0
    banner = workers.stdout()
    assert "2 process(es) x 2 thread(s)" in banner
    assert "django_actors.brokers.redis.RedisBroker" in banner


def test_sigterm_finishes_running_work_hands_back_prefetched_and_exits_0(start_workers, broker, events):
    workers = start_workers("--processes", "1", "--threads", "1", "--shutdown-timeout", "20")
    (child,) = workers.wait_ready(1)
    send(broker, "slow", "long", 1.5)
    for index in range(3):
        send(broker, "record", f"queued{index}")
    wait_for(lambda: tagged(events(), "started", "long"), "the slow message to start")
    started = time.monotonic()
    workers.signal(signal.SIGTERM)
    assert workers.wait(20) == 0
    elapsed = time.monotonic() - started
    assert tagged(events(), "done", "long"), "the running message was not finished"
    assert elapsed < 10
    # Nothing else started, and nothing was lost: the three are back in the queue.
    assert not [event for event in events() if "queued" in event]
    stats = broker.stats("alpha")
    assert (stats.ready, stats.in_flight, stats.dead) == (3, 0, 0)
    assert not alive(child)
    assert "Worker process" in workers.stderr() and "stopped." in workers.stderr()
    # The child built its own broker and ran the process hooks.
    assert tagged(events(), "process_boot", "RedisBroker") == [f"process_boot:RedisBroker:{child}"]
    assert tagged(events(), "process_stop", str(child)) == [f"process_stop:{child}:{child}"]


def test_a_killed_worker_process_is_restarted_and_its_message_redone(start_workers, broker, events):
    workers = start_workers("--processes", "2", "--threads", "1", "--shutdown-timeout", "5")
    first = workers.wait_ready(2)
    send(broker, "hang_first_time", "victim")
    started = wait_for(lambda: tagged(events(), "started1", "victim"), "the message to start")
    victim = int(started[0].split(":")[2])
    assert victim in first
    os.kill(victim, signal.SIGKILL)

    replacement = wait_for(lambda: (workers.children() - first) if len(workers.children()) == 2 and
                           victim not in workers.children() else None, "the killed process to be replaced")
    assert len(replacement) == 1
    done = wait_for(lambda: tagged(events(), "done", "victim"), "the message to be redone", timeout=30)
    assert int(done[0].split(":")[2]) != victim
    assert tagged(events(), "started2", "victim")
    assert f"Worker process {victim} (slot" in workers.stderr()
    assert "was killed by SIGKILL" in workers.stderr() and "restarting it" in workers.stderr()

    workers.signal(signal.SIGTERM)
    assert workers.wait(15) == 0


def test_queues_limits_what_is_consumed(start_workers, broker, events):
    workers = start_workers("--processes", "1", "--threads", "2", "--queues", "alpha")
    workers.wait_ready(1)
    send(broker, "record_beta", "b1", queue_name="beta")
    send(broker, "record", "a1")
    wait_for(lambda: tagged(events(), "done", "a1"), "the alpha message")
    workers.signal(signal.SIGTERM)
    assert workers.wait(15) == 0
    assert not tagged(events(), "done", "b1")
    assert broker.stats("beta").ready == 1
    assert "queues:  alpha" in workers.stdout()


def test_a_second_signal_kills_at_once(start_workers, broker, events):
    workers = start_workers("--processes", "1", "--threads", "1", "--shutdown-timeout", "60")
    (child,) = workers.wait_ready(1)
    send(broker, "slow", "forever", 60)
    wait_for(lambda: tagged(events(), "started", "forever"), "the slow message to start")
    workers.signal(signal.SIGTERM)
    wait_for(lambda: "stopping: finishing running messages" in workers.stderr(), "the graceful stop to begin")
    started = time.monotonic()
    workers.signal(signal.SIGINT)
    assert workers.wait(10) == 1
    assert time.monotonic() - started < 5
    assert not alive(child)
    assert not tagged(events(), "done", "forever")
    assert "Second stop signal" in workers.stderr()


def test_pid_file_is_written_and_removed(start_workers, tmp_path):
    pid_file = tmp_path / "workers.pid"
    workers = start_workers("--processes", "1", "--threads", "1", "--pid-file", str(pid_file))
    workers.wait_ready(1)
    assert pid_file.read_text().strip() == str(workers.pid)
    second = start_workers("--processes", "1", "--pid-file", str(pid_file))
    assert second.wait(30) != 0
    assert f"names process {workers.pid}, which is still running" in second.stderr()
    workers.signal(signal.SIGTERM)
    assert workers.wait(15) == 0
    assert not pid_file.exists()


def test_a_broker_that_cannot_be_built_stops_the_supervisor(start_workers):
    options = json.dumps({"heartbeat_timeout": -5})
    workers = start_workers("--processes", "2", "--threads", "1", env={"DJANGO_ACTORS_TEST_BROKER_OPTIONS": options})
    assert workers.wait(30) == EXIT_CONFIG
    assert "cannot build the broker from settings" in workers.stderr()
    assert "heartbeat_timeout" in workers.stderr()


def test_reload_restarts_the_workers_when_code_changes(start_workers, broker, events, tmp_path, redis_client):
    app = tmp_path / "reloadapp"
    app.mkdir()
    (app / "__init__.py").write_text("")
    source = '''
import os
import django_actors
from tests.apps.workerapp import EVENTS
from tests.apps.workerapp.actors import client

VERSION = {version}
client().rpush(EVENTS, f"boot:{{VERSION}}:{{os.getpid()}}")

@django_actors.actor(queue_name="alpha", max_retries=0)
def ping(tag):
    client().rpush(EVENTS, f"done:{{tag}}-v{{VERSION}}:{{os.getpid()}}")
'''
    actors = app / "actors.py"
    actors.write_text(source.format(version=1))
    workers = start_workers(
        "--processes", "1", "--threads", "1", "--reload", "--shutdown-timeout", "5",
        env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "DJANGO_ACTORS_TEST_EXTRA_APPS": "reloadapp"},
    )
    wait_for(lambda: "is ready." in workers.stderr(), "the first worker process")
    send(broker, "ping", "a")
    wait_for(lambda: tagged(events(), "done", "a-v1"), "a message handled by version 1")

    actors.write_text(source.format(version=2))
    # The reloader compares modification times with its first look at each
    # file, which a busy machine may take after this write: move the time
    # forward again each second until the reload shows.
    bumps = {"count": 0, "at": 0.0}

    def reloaded() -> list[str]:
        if time.monotonic() - bumps["at"] >= 1:
            bumps["count"] += 1
            bumps["at"] = time.monotonic()
            later = time.time() + 5 + bumps["count"]
            os.utime(actors, (later, later))
        return [e for e in events() if e.startswith("boot:2:")]

    wait_for(reloaded, "the project to be reloaded", timeout=30)
    send(broker, "ping", "b")
    wait_for(lambda: tagged(events(), "done", "b-v2"), "a message handled by version 2", timeout=30)
    assert not tagged(events(), "done", "b-v1")
    assert workers.stderr().count("is ready.") >= 2
    assert workers.stderr().count("stopped.") >= 1  # the old worker process stopped gracefully

    workers.signal(signal.SIGTERM)
    workers.wait(15)
    # Every process of the session ends: worker processes notice that their
    # supervisor is gone and stop by themselves.
    wait_for(lambda: not live_in_session(workers.pid), "every process of the session to exit", timeout=15)
