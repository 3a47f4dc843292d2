"""Load: 100,000 messages through 2 worker processes on the Redis broker,
with their memory flat and no error.

The workers (``tests.chaos_worker`` in counting mode) count runs in memory
and flush the counts to Redis every 100 ms, so the count costs no round trip
per message. The resident memory (``VmRSS``) of each worker process is
sampled every 0.25 s: the last sample may be at most 20% and at most 30 MB
above the sample taken after the warm-up (10,000 messages processed). The
test prints the figures (run with ``-s``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .chaos_worker import RUNS, build_broker, declare_actors
from .redis_helpers import wait_for
from .test_chaos import Pool

pytestmark = [pytest.mark.redis, pytest.mark.slow]

QUEUE = "load"
TOTAL = 100_000
WARM_UP = 10_000
BATCH = 1_000


def rss_kib(pid: int) -> int:
    """The resident set size of a process, in KiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def test_100k_messages_through_two_worker_processes_with_flat_memory(redis_url, redis_client, tmp_path):
    config = {"broker": "redis", "url": redis_url, "record_url": redis_url, "queue": QUEUE}
    config |= {"threads": 4, "heartbeat_timeout": 10_000, "counting": True}
    broker = build_broker(config)
    actors = declare_actors(broker, QUEUE)
    pool = Pool(config, tmp_path)
    pids = [worker.pid for worker in pool.workers]
    processed = lambda: int(redis_client.hget(RUNS, "tick") or 0)  # noqa: E731
    samples: list[tuple[int, list[int]]] = []
    started = time.monotonic()
    try:
        for start in range(0, TOTAL, BATCH):
            broker.enqueue_many([actors.tick.message(n) for n in range(start, start + BATCH)])
        sent_in = time.monotonic() - started
        warm: list[int] | None = None
        deadline = time.monotonic() + 120
        while processed() < TOTAL and time.monotonic() < deadline:
            samples.append((processed(), [rss_kib(pid) for pid in pids]))
            if warm is None and samples[-1][0] >= WARM_UP:
                warm = samples[-1][1]
            time.sleep(0.25)
        wait_for(lambda: processed() >= TOTAL, 10, what=f"{TOTAL} messages processed")
        last = [rss_kib(pid) for pid in pids]
        elapsed = time.monotonic() - started
        broker.join(QUEUE, timeout=10_000)
        stats = broker.stats(QUEUE)
        pool.stop()
        logs = "\n".join(path.read_text() for path in sorted(tmp_path.glob("worker-*.log")))
        assert warm is not None
        figures = {
            "messages": TOTAL,
            "processed": processed(),
            "seconds": round(elapsed, 1),
            "enqueue_seconds": round(sent_in, 1),
            "rate_per_second": round(TOTAL / elapsed),
            "rss_after_warm_up_mib": [round(kib / 1024, 1) for kib in warm],
            "rss_last_mib": [round(kib / 1024, 1) for kib in last],
            "rss_peak_mib": [round(max(s[1][i] for s in samples) / 1024, 1) for i in range(len(pids))],
            "samples": len(samples),
        }
        print(f"\nLOAD {json.dumps(figures)}")
        assert processed() == TOTAL  # at least once, and no duplicate without a fault
        assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)
        assert broker.dead_letters() == []
        assert " ERROR " not in logs and "Traceback" not in logs, logs[-3000:]
        for before, after in zip(warm, last, strict=True):
            assert after <= before * 1.2 and after - before <= 30 * 1024, (
                f"worker memory grew from {before} KiB to {after} KiB"
            )
    finally:
        pool.close()
        broker.close()
