"""Composition sizes and timings on the in-memory stub broker.

Prints:
  * the encoded size of a pipeline's first message for 10, 100 and 5,000
    steps: with a results backend (this project's constant-size messages)
    and without one (dramatiq's nested ``pipe_target``, kept for
    compatibility);
  * the time ``group.run()`` takes for a 10,000-member group, and how many
    broker calls it made;
  * the time ``completed_count`` takes on that group, before and after a
    worker processed it, and how many backend calls each read made.

Run from the repository root:  python benchmarks/composition_sizes.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from django_actors import actor, group, pipeline
from django_actors.broker import default_middleware, set_broker
from django_actors.brokers.stub import StubBroker
from django_actors.testing import make_stub_broker
from django_actors.worker import Worker

STEPS = (10, 100, 5_000)
MEMBERS = 10_000


def first_message_size(broker: StubBroker, length: int, step: Any) -> str:
    """Run a pipeline of ``length`` steps and return the size of what was enqueued."""
    broker.flush_all()
    try:
        pipeline([step.message() for _ in range(length)], broker=broker).run()
    except ValueError:  # nests too deeply to encode
        return "too deep to encode"
    queued = broker.queues["default"].ready
    assert len(queued) == 1
    return f"{len(queued[0]):,} bytes"


def counted(obj: Any, name: str) -> list[int]:
    """Count calls to ``obj.name`` (the real method still runs)."""
    calls: list[int] = []
    original = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    setattr(obj, name, wrapper)
    return calls


def timed(function: Any, repeat: int = 1) -> tuple[Any, float]:
    """Return the last result and the median duration in milliseconds."""
    durations, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        durations.append((time.perf_counter() - start) * 1000)
    return result, statistics.median(durations)


def main() -> None:
    broker = make_stub_broker()
    bare = StubBroker(middleware=default_middleware())  # no results backend
    set_broker(broker)

    @actor
    def step(value: int = 0) -> int:
        return value + 1

    bare.declare_actor(step)

    print("Encoded size of a pipeline's first message")
    print(f"{'steps':>8}  {'this project':>14}  {'no results backend (pipe_target)':>34}")
    for length in STEPS:
        ours = first_message_size(broker, length, step)
        nested = first_message_size(bare, length, step)
        print(f"{length:>8,}  {ours:>14}  {nested:>34}")

    broker.flush_all()
    enqueue_calls = counted(broker, "_enqueue_many")
    members = group([step.message(i) for i in range(MEMBERS)], broker=broker)
    _, run_ms = timed(members.run)
    print(f"\ngroup.run() of {MEMBERS:,} members: {run_ms:.1f} ms, {len(enqueue_calls)} broker enqueue calls")

    backend = broker.get_results_backend()
    count_calls, get_calls = counted(backend, "_count_members"), counted(backend, "_get_many")
    count, count_ms = timed(lambda: members.completed_count, repeat=50)
    print(f"completed_count before processing: {count:,} in {count_ms:.3f} ms (median of 50), "
          f"{len(count_calls) // 50} _count_members + {len(get_calls) // 50} _get_many call(s) per read")

    worker = Worker(broker, worker_timeout=50, worker_threads=8)
    worker.start()
    start = time.perf_counter()
    members.wait(timeout=120_000)
    processed_s = time.perf_counter() - start
    worker.stop()
    count_calls.clear()
    get_calls.clear()
    count, count_ms = timed(lambda: members.completed_count, repeat=50)
    print(f"completed_count after processing:  {count:,} in {count_ms:.3f} ms (median of 50), "
          f"{len(count_calls) // 50} _count_members + {len(get_calls) // 50} _get_many call(s) per read")
    print(f"(processing the {MEMBERS:,} members with 8 worker threads took {processed_s:.2f} s)")


if __name__ == "__main__":
    main()
