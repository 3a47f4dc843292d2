"""What the admin mirror costs on the Redis drain benchmark.

    python -m benchmarks.mirror_overhead [--url redis://127.0.0.1:6379/15]
        [--drain 20000] [--threads 8] [--repeat 5] [--groups 0]

Drains N no-op messages already queued in Redis with one worker of T threads
(in a fresh subprocess each time, like ``benchmarks.redis_compare``), with
the default middleware, and again with the :class:`Mirror` middleware
added; the mirror writes to a SQLite database (a file, WAL journal, like a
project's default). Runs alternate between the two setups, a run without the
mirror then one with it; the overhead reported is the median over those
pairs (each pair runs within seconds, so a machine whose load changes over
minutes skews it less than the medians of the rates, also shown). Also
reported: the process's CPU time per message, and how long after the last
message ran the mirror had written every row (its lag).

``--groups G`` sends the messages as G groups instead (with a Redis results
backend in both setups), so the mirror also refreshes composition progress.

Without ``--url`` a private redis-server (no persistence) is started on a
free port and stopped afterwards; with ``--url`` that database is FLUSHED.
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
from pathlib import Path
from typing import Any

import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
QUEUE = "bench-mirror"


def _setup_django(database: str) -> None:
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django_actors"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": database}},
        USE_TZ=True,
        DJANGO_ACTORS={"MIRROR": {"ENABLED": False}, "DISCOVER": []},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode=WAL")
    connection.close()


def drain_in_this_process(
    url: str, count: int, threads: int, mirror: bool, groups: int, database: str
) -> dict[str, float]:
    """Queue ``count`` no-op messages, then time one worker running them all."""
    _setup_django(database)
    from django_actors import Worker, actor, group
    from django_actors.broker import default_middleware
    from django_actors.brokers.redis import RedisBroker
    from django_actors.middleware.mirror import Mirror
    from django_actors.models.mirror import MessageRecord
    from django_actors.results.backends.redis import RedisBackend
    from django_actors.results.middleware import Results

    done = 0
    lock = threading.Lock()
    finished = threading.Event()

    def build(with_mirror: bool) -> Any:
        middleware: list[Any] = [*default_middleware()]
        if with_mirror:
            middleware.insert(0, Mirror())
        if groups:
            middleware.append(Results(backend=RedisBackend(url=url)))
        return RedisBroker(url=url, middleware=middleware)

    redis.Redis.from_url(url).flushdb()
    sender = build(False)  # the web process: no mirror there, the worker's counts
    broker = build(mirror)

    for target in (sender, broker):

        @actor(broker=target, queue_name=QUEUE, actor_name="noop")
        def noop(n: int) -> None:
            nonlocal done
            with lock:
                done += 1
                if done == count:
                    finished.set()

        if target is sender:
            messages = [noop.message(n) for n in range(count)]
            if groups:
                size = count // groups
                for start in range(0, count, size):
                    group(messages[start : start + size], broker=sender).run()
            else:
                sender.enqueue_many(messages)
    worker = Worker(broker, worker_threads=threads)
    start, cpu_start = time.perf_counter(), time.process_time()
    worker.start()
    if not finished.wait(600):
        raise RuntimeError(f"only {done} of {count} messages ran in 10 minutes")
    elapsed = time.perf_counter() - start
    lag = 0.0
    if mirror:
        deadline = time.monotonic() + 120
        while MessageRecord.objects.filter(status="succeeded").count() < count:
            if time.monotonic() > deadline:
                raise RuntimeError("the mirror did not catch up within 2 minutes")
            time.sleep(0.2)
        lag = time.perf_counter() - start - elapsed
    # CPU time of the whole process (every thread, the mirror's included, until
    # its rows were written): less sensitive than rates to a busy machine.
    cpu = time.process_time() - cpu_start
    worker.stop()
    broker.emit_before("process_stop")
    broker.close()
    sender.close()
    return {"elapsed": elapsed, "lag": lag, "cpu": cpu}


def measure(url: str, count: int, threads: int, mirror: bool, groups: int) -> dict[str, float]:
    """One drain in a fresh subprocess, with a fresh mirror database."""
    with tempfile.TemporaryDirectory(prefix="mirror-bench-") as directory:
        env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        args = [sys.executable, "-m", "benchmarks.mirror_overhead", "_drain", url, str(count), str(threads)]
        args += ["1" if mirror else "0", str(groups), str(Path(directory) / "mirror.sqlite3")]
        done = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"A drain run failed:\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


class _Server:
    """A private redis-server without persistence."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="redis-bench-")
        executable = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
        if executable is None:
            sys.exit("redis-server is not installed; pass --url to use a running Redis.")
        command = [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen([*command, "--dir", self.dir], stdout=subprocess.DEVNULL)
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
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_drain":
        url, count, threads, mirror, groups, database = argv[1:7]
        result = drain_in_this_process(url, int(count), int(threads), mirror == "1", int(groups), database)
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a Redis database to use (it is FLUSHED)")
    parser.add_argument("--drain", type=int, default=20_000, help="messages drained per run")
    parser.add_argument("--threads", type=int, default=8, help="worker threads")
    parser.add_argument("--repeat", type=int, default=5, help="runs per setup (the median is reported)")
    parser.add_argument("--groups", type=int, default=0, help="send the messages as this many groups")
    options = parser.parse_args(argv)
    server = None if options.url else _Server()
    url = options.url or (server.url if server else "")
    try:
        runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for _ in range(options.repeat):
            for mirror in (False, True):
                runs[mirror].append(measure(url, options.drain, options.threads, mirror, options.groups))
    finally:
        if server is not None:
            server.stop()
    rates = {m: statistics.median(options.drain / r["elapsed"] for r in runs[m]) for m in runs}
    cpu = {m: statistics.median(r["cpu"] * 1e6 / options.drain for r in runs[m]) for m in runs}
    lag = statistics.median(r["lag"] for r in runs[True])
    overhead = (rates[False] - rates[True]) / rates[False] * 100
    cpu_overhead = (cpu[True] - cpu[False]) / cpu[False] * 100
    paired = statistics.median(
        (with_mirror["elapsed"] - without["elapsed"]) / with_mirror["elapsed"] * 100
        for without, with_mirror in zip(runs[False], runs[True], strict=True)
    )
    what = f"{options.groups} groups of {options.drain // options.groups}" if options.groups else "plain messages"
    print(f"Redis drain, {options.drain} no-op messages ({what}), {options.threads} threads, "
          f"median of {options.repeat} runs")  # fmt: skip
    print(f"  without the mirror: {rates[False]:9.0f} msg/s   {cpu[False]:6.1f} us of CPU per message")
    print(f"  with the mirror:    {rates[True]:9.0f} msg/s   {cpu[True]:6.1f} us of CPU per message")
    print(f"  overhead:           {paired:9.1f} %  (median of the {options.repeat} pairs; of the medians above:"
          f" {overhead:.1f} %; CPU: {cpu_overhead:.1f} %)")  # fmt: skip
    print(f"  the mirror's rows were complete {lag:.2f} s after the last message ran")


if __name__ == "__main__":
    main()
