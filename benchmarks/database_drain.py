"""Drain rate of the database broker: N no-op messages, one worker process.

    python benchmarks/database_drain.py --database sqlite
    python benchmarks/database_drain.py --database postgres       # starts a throwaway server
    python benchmarks/database_drain.py --database postgres --messages 20000 --threads 8

The broker is built from settings exactly as a project without a
``DJANGO_ACTORS`` setting gets it (database broker, the default middleware
with DbConnections), with results off. The messages are enqueued in one
batch first (timed separately), then a :class:`~django_actors.worker.Worker`
in this process with ``--threads`` worker threads runs them until the queue
is empty. SQLite uses a file in a temporary directory (WAL mode, the
broker's default); PostgreSQL is a local server with ``fsync`` on unless
``--no-fsync``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def configure(database: dict[str, Any]) -> None:
    import django
    from django.conf import settings

    settings.configure(
        DATABASES={"default": database},
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django_actors"],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        DJANGO_ACTORS={"RESULTS": None, "DISCOVER": []},
        LOGGING_CONFIG=None,
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def run(messages: int, threads: int) -> dict[str, float]:
    from django_actors import actor
    from django_actors.broker import set_broker
    from django_actors.conf import build_broker
    from django_actors.worker import Worker

    broker = build_broker()
    set_broker(broker)

    @actor(broker=broker, queue_name="bench")
    def noop(n: int) -> None:
        pass

    started = time.perf_counter()
    broker.enqueue_many([noop.message(n) for n in range(messages)])
    enqueued = time.perf_counter() - started

    worker = Worker(broker, worker_threads=threads, worker_timeout=100)
    started = time.perf_counter()
    worker.start()
    broker.join("bench", timeout=600_000)
    drained = time.perf_counter() - started
    worker.stop()
    broker.close()
    return {"enqueue_per_s": messages / enqueued, "drain_per_s": messages / drained, "drain_s": drained}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--messages", type=int, default=5_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--no-fsync", action="store_true", help="PostgreSQL: fsync and synchronous_commit off")
    args = parser.parse_args()

    server = None
    with tempfile.TemporaryDirectory(prefix="django_actors_bench_") as tmp:
        if args.database == "sqlite":
            database: dict[str, Any] = {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(Path(tmp) / "bench.sqlite3"),
                "OPTIONS": {"timeout": 20},
            }
        else:
            from tests.conftest_pg import PostgresServer

            server = PostgresServer(durable=not args.no_fsync).start()
            database = server.database_settings("postgres")
        try:
            configure(database)
            result = run(args.messages, args.threads)
        finally:
            if server is not None:
                from django.db import connections

                connections.close_all()
                server.stop()
    print(
        f"{args.database}: {args.messages} no-op messages, 1 worker process x {args.threads} threads: "
        f"drained in {result['drain_s']:.2f} s = {result['drain_per_s']:,.0f} msg/s "
        f"(batched enqueue: {result['enqueue_per_s']:,.0f} msg/s)"
    )


if __name__ == "__main__":
    main()
