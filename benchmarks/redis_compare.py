"""django_actors' RedisBroker against dramatiq's, on the same redis-server.

    python -m benchmarks.redis_compare [--url redis://127.0.0.1:6379/15] [--repeat 3]
        [--enqueue 10000] [--drain 20000] [--threads 8]

Without ``--url`` a private redis-server (no persistence) is started on a
free port and stopped afterwards; with ``--url`` that database is FLUSHED.

Measured, for both libraries, with their default middleware and no results
backend:

- enqueue: a loop of ``actor.send()``; one batch of messages
  (``broker.enqueue_many`` here; dramatiq has none, so its ``group.run()``);
  ``group(...).run()``.
- drain: N no-op messages already queued, one worker with T threads in a
  fresh subprocess; the time from ``worker.start()`` until the last message
  ran. The rate is messages per second.

Each figure is the median of ``--repeat`` rounds; in every round the two
libraries take turns (the send() loops in ten alternating slices), so a
change in machine load hits both alike. Run it with an interpreter that has
dramatiq (the ``bench`` extra; never a runtime dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
QUEUE = "bench"


# Subjects ---------------------------------------------------------------------------------------


def _ours(url: str, on_run: Callable[[], None] | None = None) -> tuple[Any, Any, Any]:
    """(broker, no-op actor, group class) for django_actors."""
    from django_actors import actor, group
    from django_actors.brokers.redis import RedisBroker

    broker = RedisBroker(url=url)

    @actor(broker=broker, queue_name=QUEUE, actor_name="noop")
    def noop(n: int) -> None:
        if on_run is not None:
            on_run()

    return broker, noop, group


def _dramatiq(url: str, on_run: Callable[[], None] | None = None) -> tuple[Any, Any, Any]:
    """(broker, no-op actor, group class) for dramatiq."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=url)
    dramatiq.set_broker(broker)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="noop")
    def noop(n: int) -> None:
        if on_run is not None:
            on_run()

    return broker, noop, dramatiq.group


SUBJECTS = {"django_actors": _ours, "dramatiq": _dramatiq}


# Measurements -----------------------------------------------------------------------------------


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def measure_enqueue(subjects: dict[str, tuple[Any, Any, Any]], url: str, count: int) -> dict[str, dict[str, float]]:
    """One round of enqueue rates (messages/s) per library: a send() loop,
    one batch, and group.run(). The send() loops run in ten slices, the
    libraries taking turns, so a change in machine load hits both alike."""
    client = redis.Redis.from_url(url)
    results: dict[str, dict[str, float]] = {impl: {} for impl in subjects}

    client.flushdb()
    spent = dict.fromkeys(subjects, 0.0)
    slice_size = max(count // 10, 1)
    for first in range(0, count, slice_size):
        for impl, (_, noop, _) in subjects.items():
            start = time.perf_counter()
            for n in range(first, min(first + slice_size, count)):
                noop.send(n)
            spent[impl] += time.perf_counter() - start
    for impl in subjects:
        results[impl]["send"] = _rate(count, spent[impl])

    for impl, (broker, noop, group) in subjects.items():
        client.flushdb()
        messages = [noop.message(n) for n in range(count)]
        start = time.perf_counter()
        if impl == "django_actors":
            broker.enqueue_many(messages)
        else:
            group(messages, broker=broker).run()
        results[impl]["batch"] = _rate(count, time.perf_counter() - start)

        client.flushdb()
        messages = [noop.message(n) for n in range(count)]
        start = time.perf_counter()
        group(messages, broker=broker).run()
        results[impl]["group"] = _rate(count, time.perf_counter() - start)
    client.flushdb()
    return results


def drain_in_this_process(impl: str, url: str, count: int, threads: int) -> float:
    """Queue ``count`` no-op messages, then time one worker running them all."""
    done = 0
    lock = threading.Lock()
    finished = threading.Event()

    def on_run() -> None:
        nonlocal done
        with lock:
            done += 1
            if done == count:
                finished.set()

    redis.Redis.from_url(url).flushdb()
    broker, noop, _ = SUBJECTS[impl](url, on_run)
    messages = [noop.message(n) for n in range(count)]
    if impl == "django_actors":
        from django_actors import Worker

        broker.enqueue_many(messages)
        worker: Any = Worker(broker, worker_threads=threads)
    else:
        import dramatiq

        for message in messages:
            broker.enqueue(message)
        worker = dramatiq.Worker(broker, worker_threads=threads)
    start = time.perf_counter()
    worker.start()
    if not finished.wait(600):
        raise RuntimeError(f"{impl}: only {done} of {count} messages ran in 10 minutes")
    elapsed = time.perf_counter() - start
    worker.stop()
    broker.close()
    return elapsed


def measure_drain(impl: str, url: str, count: int, threads: int) -> float:
    """The drain rate (messages/s), measured in a fresh subprocess."""
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.redis_compare", "_drain", impl, url, str(count), str(threads)],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    elapsed = json.loads(output.strip().splitlines()[-1])["elapsed"]
    return _rate(count, float(elapsed))


# A private redis-server --------------------------------------------------------------------------


class _Server:
    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="redis-bench-")
        executable = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
        if executable is None:
            sys.exit("redis-server is not installed; pass --url to use a running Redis.")
        self.proc = subprocess.Popen(
            [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


# Report --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a Redis database to use (it is flushed); default: a private redis-server")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--enqueue", type=int, default=10_000, help="messages per enqueue measurement")
    parser.add_argument("--drain", type=int, default=20_000, help="messages drained by the worker")
    parser.add_argument("--threads", type=int, default=8, help="worker threads")
    options = parser.parse_args(argv)

    server = None if options.url else _Server()
    url = options.url or server.url  # type: ignore[union-attr]
    try:
        # The libraries take turns in every round, so a change in machine load
        # affects both alike.
        samples: dict[str, dict[str, list[float]]] = {}
        names = {
            "send": f"send() loop, {options.enqueue:,} msgs",
            "batch": f"batch (enqueue_many / dramatiq group.run()), {options.enqueue:,}",
            "group": f"group.run(), {options.enqueue:,} msgs",
            "drain": f"drain {options.drain:,} no-op, 1 worker x {options.threads} threads",
        }
        subjects = {impl: build(url) for impl, build in SUBJECTS.items()}
        for _ in range(options.repeat):
            enqueue = measure_enqueue(subjects, url, options.enqueue)
            for impl in SUBJECTS:
                figures = {**enqueue[impl], "drain": measure_drain(impl, url, options.drain, options.threads)}
                for key, value in figures.items():
                    samples.setdefault(names[key], {}).setdefault(impl, []).append(value)
        for broker, _, _ in subjects.values():
            broker.close()
        rows = {name: {impl: statistics.median(v) for impl, v in by_impl.items()} for name, by_impl in samples.items()}
        info = redis.Redis.from_url(url).info("server")
        print(f"redis-server {info['redis_version']}, Python {sys.version.split()[0]}, "
              f"median of {options.repeat} run(s), rates in messages/second\n")  # fmt: skip
        width = max(len(name) for name in rows)
        print(f"{'benchmark':<{width}}  {'django_actors':>14}  {'dramatiq':>12}  {'ratio':>7}")
        for name, values in rows.items():
            ours, theirs = values["django_actors"], values["dramatiq"]
            print(f"{name:<{width}}  {ours:>14,.0f}  {theirs:>12,.0f}  {ours / theirs:>6.2f}x")
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["_drain"]:
        impl, url, count, threads = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps({"elapsed": drain_in_this_process(impl, url, count, threads)}))
        sys.exit(0)
    sys.exit(main())
