"""A longer memory soak of a Redis worker than the runner's figure 5.

    python -m benchmarks.memory_soak                      # 300,000 no-op messages
    python -m benchmarks.memory_soak --messages 1000000 --tracemalloc

One process: a private redis-server, a :class:`~django_actors.worker.Worker`
with ``--threads`` threads on a RedisBroker with the default middleware and
Redis results, fed batches of 20,000 no-op messages. After each batch it
prints the RSS and the number of objects the garbage collector tracks; with
``--tracemalloc`` it also prints the allocation sites that grew most
between the first batch and the last. A leak shows as a curve that keeps
climbing; the allocator warming up shows as a curve that levels off.
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
import tracemalloc
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

BATCH = 20_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300_000, help="no-op messages in all (default 300,000)")
    parser.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    parser.add_argument("--tracemalloc", action="store_true", help="print the allocation sites that grew most")
    options = parser.parse_args(argv)
    if options.messages < 2 * BATCH:
        parser.error(f"--messages must be at least {2 * BATCH:,}")

    import psutil

    import django_actors
    from django_actors.broker import default_middleware
    from django_actors.brokers.redis import RedisBroker
    from django_actors.results import Results
    from django_actors.results.backends.redis import RedisBackend

    from .redis_server import RedisServer

    server = RedisServer()
    backend = RedisBackend(url=server.url)
    broker = RedisBroker(url=server.url, middleware=[*default_middleware(), Results(backend=backend)])
    done = threading.Semaphore(0)

    @django_actors.actor(broker=broker, queue_name="soak")
    def noop(n: int) -> None:
        done.release()

    def feed() -> None:
        for first in range(0, BATCH, 1000):
            broker.enqueue_many([noop.message(i) for i in range(first, first + 1000)])
        for _ in range(BATCH):
            if not done.acquire(timeout=120):
                raise SystemExit("the worker stalled: no message done in 120 s")

    worker = django_actors.Worker(broker, worker_threads=options.threads)
    worker.start()
    process = psutil.Process()
    try:
        feed()  # warm up: imports, connections, caches
        gc.collect()
        first = None
        if options.tracemalloc:
            tracemalloc.start(25)
            first = tracemalloc.take_snapshot()
        baseline = process.memory_info().rss / 1e6
        print(f"{'messages':>9}  {'RSS MB':>7}  {'growth':>7}  {'gc objects':>10}")
        started = time.monotonic()
        for batch in range(1, options.messages // BATCH):
            feed()
            rss = process.memory_info().rss / 1e6
            print(
                f"{(batch + 1) * BATCH:>9,}  {rss:>7.2f}  {rss - baseline:>+7.2f}  {len(gc.get_objects()):>10,}",
                flush=True,
            )
        print(f"{options.messages // BATCH * BATCH:,} messages in {time.monotonic() - started:.1f} s")
        if first is not None:
            gc.collect()
            for stat in tracemalloc.take_snapshot().compare_to(first, "traceback")[:5]:
                print(stat)
                print("\n".join(stat.traceback.format()[-6:]))
    finally:
        worker.stop()
        broker.close()
        backend.close()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
