"""Helpers for the Redis broker and backend tests.

- ``make_broker``: a RedisBroker with the default middleware, CurrentMessage
  and a RedisBackend for results.
- ``wait_for``: poll a condition with a bounded timeout (the one helper for
  that, shared by the other test modules too).
- ``RedisProcess``: a redis-server of a test's own (for restarts).
- ``python -m tests.redis_helpers worker ...``: a worker process for the
  fault tests (see ``worker_main``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

REPO_ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = "") -> Any:
    """Return the first truthy value of ``predicate()``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"Timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def make_broker(url: str, **kwargs: Any) -> Any:
    """A RedisBroker with default middleware, CurrentMessage and Redis results."""
    from django_actors.broker import default_middleware
    from django_actors.brokers.redis import RedisBroker
    from django_actors.middleware import CurrentMessage
    from django_actors.results import Results
    from django_actors.results.backends.redis import RedisBackend

    results = kwargs.pop("results", True)
    middleware = [*default_middleware(), CurrentMessage()]
    if results:
        middleware.append(Results(backend=RedisBackend(url=url)))
    return RedisBroker(url=url, middleware=middleware, **kwargs)


def commandstats(client: redis.Redis) -> dict[str, int]:
    """How many times each command ran on the server (``INFO commandstats``)."""
    info = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """A redis-server with AOF (``appendfsync always``) in its own directory,
    which a test can stop and start again on the same port."""

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        executable = os.environ.get("REDIS_SERVER") or shutil.which("redis-server") or "redis-server"
        self.proc = subprocess.Popen(
            [
                executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
                "--logfile", str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.exceptions.RedisError:
                return False

        wait_for(up, timeout, interval=0.02, what=f"redis-server on port {self.port}")
        client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis fsyncs its AOF and exits) and wait for the exit."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        if down_for:
            time.sleep(down_for)  # the outage itself, not a synchronisation
        self.start()


# The worker process used by the fault tests ------------------------------------------------


def spawn_worker(
    url: str,
    *,
    queue: str,
    threads: int = 4,
    heartbeat_timeout: int = 1000,
    work_ms: float = 0.0,
    shutdown_ms: int = 5000,
    prefetch: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``worker_main`` in a new Python process; returns once it consumes."""
    args = [
        sys.executable, "-m", "tests.redis_helpers", "worker", "--url", url, "--queue", queue,
        "--threads", str(threads), "--heartbeat-timeout", str(heartbeat_timeout),
        "--work-ms", str(work_ms), "--shutdown-ms", str(shutdown_ms),
    ]  # fmt: skip
    if prefetch:
        args += ["--prefetch", str(prefetch)]
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=None)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        proc.kill()
        raise AssertionError(f"worker process did not start: {line!r}")
    return proc


def record_keys(queue: str) -> tuple[str, str]:
    """The set of processed numbers and the counter of processings, for a queue."""
    return f"test:{queue}:done", f"test:{queue}:runs"


def worker_main(argv: list[str]) -> int:
    """A worker process: actor ``record(n)`` adds ``n`` to a Redis set and
    counts every run; SIGTERM stops it gracefully."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--heartbeat-timeout", type=int, default=1000)
    parser.add_argument("--work-ms", type=float, default=0.0)
    parser.add_argument("--shutdown-ms", type=int, default=5000)
    parser.add_argument("--prefetch", type=int, default=None)
    options = parser.parse_args(argv)

    from django_actors import Worker, actor
    from django_actors.brokers.redis import RedisBroker

    broker = RedisBroker(url=options.url, heartbeat_timeout=options.heartbeat_timeout)
    done_key, runs_key = record_keys(options.queue)
    recorder = redis.Redis.from_url(options.url)

    @actor(broker=broker, queue_name=options.queue, actor_name="record", max_retries=0)
    def record(n: int) -> None:
        if options.work_ms:
            time.sleep(options.work_ms / 1000)
        # The work must really happen: keep trying while Redis restarts.
        deadline = time.monotonic() + 60
        while True:
            try:
                with recorder.pipeline(transaction=True) as pipe:
                    pipe.sadd(done_key, n).incr(runs_key).execute()
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = Worker(broker, worker_threads=options.threads, worker_timeout=100, prefetch=options.prefetch)
    worker.start()
    wait_for(lambda: broker.state.registered, 30, what="the worker to register")
    print("ready", flush=True)
    stop.wait()
    worker.stop(timeout=options.shutdown_ms)
    broker.close()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker_main(sys.argv[2:]))
    sys.exit(f"usage: {sys.argv[0]} worker --url URL --queue NAME [...]")
