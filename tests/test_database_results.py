"""The database results backend, on SQLite and on PostgreSQL (``db_alias`` is parametrized)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connections

from django_actors import actor, group, pipeline
from django_actors.brokers.database import DatabaseBroker
from django_actors.message import Message
from django_actors.models import ResultSet, ResultSetMember, StoredResult
from django_actors.results import ResultFailure, ResultMissing, ResultTimeout
from django_actors.results.backends.database import DatabaseBackend
from django_actors.worker import Worker

from .redis_helpers import wait_for as wait_until

_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}_{next(_names)}"


def in_threads(count: int, target: Callable[[int], Any]) -> list[Any]:
    """Run ``target(i)`` in ``count`` threads started together; return their results."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            barrier.wait(10)
            results[index] = target(index)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return results


def message(n: int = 0) -> Message[Any]:
    return Message(queue_name="default", actor_name="x", args=(n,), kwargs={}, options={})


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="using"):
        DatabaseBackend(using="")
    with pytest.raises(ValueError, match="poll_interval"):
        DatabaseBackend(poll_interval=0)


def test_results_and_failures_round_trip(database_backend: DatabaseBackend) -> None:
    ok, failed, missing = message(1), message(2), message(3)
    database_backend.store_result(ok, {"total": [1, 2.5, "three", None]}, ttl=60_000)
    database_backend.store_exception(failed, ValueError("nope"), ttl=60_000)
    assert database_backend.get_result(ok) == {"total": [1, 2.5, "three", None]}
    assert database_backend.get_result(ok.message_id, block=True) == {"total": [1, 2.5, "three", None]}
    with pytest.raises(ResultFailure, match="ValueError: nope"):
        database_backend.get_result(failed)
    with pytest.raises(ResultMissing):
        database_backend.get_result(missing)
    started = time.monotonic()
    with pytest.raises(ResultTimeout):
        database_backend.get_result(missing, block=True, timeout=150)
    assert 0.14 <= time.monotonic() - started < 2
    database_backend.store_result(ok, "overwritten", ttl=60_000)
    assert database_backend.get_result(ok) == "overwritten"


def test_unencodable_result_stores_nothing(database_backend: DatabaseBackend, db_alias: str) -> None:
    with pytest.raises(TypeError):
        database_backend._store_many({"a": 1, "b": object()}, 60_000)
    assert not StoredResult.objects.using(db_alias).exists()


def test_expired_records_are_ignored_and_pruned(database_backend: DatabaseBackend, db_alias: str) -> None:
    database_backend._store_many({"short": 1}, 100)
    database_backend._store_many({"long": 2}, 60_000)
    database_backend._add_member("short-set", 1, 100)
    assert database_backend._get("short") == 1
    assert database_backend._count_members(["short-set"]) == [1]
    wait_until(lambda: database_backend._get("short") is None, timeout=5)
    wait_until(lambda: database_backend._count_members(["short-set"]) == [0], timeout=5)
    assert database_backend._get_many(["short", "long"]) == [None, 2]
    assert StoredResult.objects.using(db_alias).count() == 2  # still there, ignored
    assert database_backend.prune() == {"results": 1, "sets": 1, "members": 1}
    assert list(StoredResult.objects.using(db_alias).values_list("key", flat=True)) == ["long"]
    assert not ResultSetMember.objects.using(db_alias).exists()


def test_get_many_keeps_order_and_duplicates(database_backend: DatabaseBackend) -> None:
    database_backend._store_many({f"k{i}": i for i in range(1_200)}, 60_000)  # several chunks
    keys = ["k5", "nope", "k5", "k1199", "k0"]
    assert database_backend._get_many(keys) == [5, None, 5, 1199, 0]
    assert database_backend._get_many([f"k{i}" for i in range(1_200)]) == list(range(1_200))


def test_long_keys_are_shortened_without_collisions(database_backend: DatabaseBackend, db_alias: str) -> None:
    first, second = "x" * 300 + "1", "x" * 300 + "2"
    database_backend._store_many({first: "one", second: "two"}, 60_000)
    assert database_backend._get_many([first, second]) == ["one", "two"]
    assert all(len(key) <= 255 for key in StoredResult.objects.using(db_alias).values_list("key", flat=True))
    assert database_backend._claim(first + ":claim", "me", 60_000)
    database_backend._delete_many([first])
    assert database_backend._get_many([first, second]) == [None, "two"]


def test_blocking_get_wakes_at_once_on_a_store_in_this_process(db_alias: str) -> None:
    backend = DatabaseBackend(using=db_alias, poll_interval=10_000)  # polling alone would be slow
    msg = message()
    stored_at: list[float] = []

    def store() -> None:
        stored_at.append(time.monotonic())
        backend.store_result(msg, "hello", ttl=60_000)

    timer = threading.Timer(0.2, lambda: (store(), connections.close_all()))
    timer.start()
    try:
        assert backend.get_result(msg, block=True, timeout=15_000) == "hello"
        assert time.monotonic() - stored_at[0] < 0.5
    finally:
        timer.join()


def test_add_member_counts_and_stores_records_atomically(database_backend: DatabaseBackend) -> None:
    assert database_backend._add_member("set", 0, 60_000, {"r:0": "zero"}) == (True, 1)
    assert database_backend._add_member("set", 1, 60_000, {"r:1": "one"}) == (True, 2)
    assert database_backend._add_member("set", 1, 60_000, {"r:1": "one again"}) == (False, 2)
    assert database_backend._add_member("other", 7, 60_000) == (True, 1)
    assert database_backend._get_many(["r:0", "r:1"]) == ["zero", "one again"]
    assert database_backend._count_members(["set", "missing", "other", "set"]) == [2, 0, 1, 2]


def test_an_expired_set_starts_afresh(database_backend: DatabaseBackend) -> None:
    assert database_backend._add_member("brief", 1, 100) == (True, 1)
    assert database_backend._add_member("brief", 2, 100) == (True, 2)
    wait_until(lambda: database_backend._count_members(["brief"]) == [0], timeout=5)
    assert database_backend._add_member("brief", 2, 60_000) == (True, 1)


def test_concurrent_adds_each_see_a_distinct_size(database_backend: DatabaseBackend) -> None:
    # The property group completion relies on: exactly one add sees the full set.
    threads, per_thread = 8, 25

    def add(index: int) -> list[int]:
        return [
            database_backend._add_member("crowd", index * per_thread + n, 60_000, {f"r:{index}:{n}": n})[1]
            for n in range(per_thread)
        ]

    sizes = sorted(size for sizes in in_threads(threads, add) for size in sizes)
    assert sizes == list(range(1, threads * per_thread + 1))
    assert database_backend._count_members(["crowd"]) == [threads * per_thread]


def test_concurrent_duplicate_adds_are_counted_once(database_backend: DatabaseBackend) -> None:
    results = in_threads(6, lambda index: database_backend._add_member("dupes", 42, 60_000))
    assert sorted(results) == [(False, 1)] * 5 + [(True, 1)]


def test_claims(database_backend: DatabaseBackend) -> None:
    assert database_backend._claim("lock", "alice", 60_000) is True
    assert database_backend._claim("lock", "alice", 60_000) is True  # already hers
    assert database_backend._claim("lock", "bob", 60_000) is False
    assert database_backend._claim("brief", "alice", 100) is True
    wait_until(lambda: database_backend._claim("brief", "bob", 60_000), timeout=5)  # expired claims are free
    assert database_backend._claim("brief", "alice", 60_000) is False


def test_concurrent_claims_have_one_winner(database_backend: DatabaseBackend) -> None:
    for round_ in range(5):
        key = f"race:{round_}"
        won = in_threads(6, lambda index, key=key: database_backend._claim(key, f"token-{index}", 60_000))
        assert won.count(True) == 1
        winner = f"token-{won.index(True)}"
        assert database_backend._get(key) == winner


def test_delete_many_and_flush_stay_in_their_namespace(db_alias: str, database_backend: DatabaseBackend) -> None:
    neighbour = DatabaseBackend(using=db_alias, namespace="neighbour")
    for backend in (database_backend, neighbour):
        backend._store_many({backend.build_message_key("m"): {"r": 1}, f"{backend.namespace}:k": 2}, 60_000)
        backend._add_member(f"{backend.namespace}:s", 1, 60_000)
    database_backend._delete_many([f"{database_backend.namespace}:s", f"{database_backend.namespace}:k"])
    assert database_backend._count_members([f"{database_backend.namespace}:s"]) == [0]
    assert database_backend._get(f"{database_backend.namespace}:k") is None
    assert database_backend.get_result("m") == 1
    database_backend.flush()
    with pytest.raises(ResultMissing):
        database_backend.get_result("m")
    assert neighbour.get_result("m") == 1
    assert neighbour._count_members(["neighbour:s"]) == [1]
    assert ResultSet.objects.using(db_alias).count() == 1


# Compositions on the database broker and backend ----------------------------------------------


@pytest.fixture
def running_worker(database_broker: DatabaseBroker) -> Any:
    worker = Worker(database_broker, worker_timeout=100, worker_threads=8)
    worker.start()
    yield worker
    worker.stop()


def test_pipeline_passes_results_along(database_broker: DatabaseBroker, running_worker: Worker) -> None:
    @actor(broker=database_broker, actor_name=unique("inc"), store_results=True)
    def inc(n: int) -> int:
        return n + 1

    pipe = pipeline([inc.message(0), inc.message(), inc.message(), inc.message()]).run()
    assert pipe.get_result(block=True, timeout=20_000) == 4
    assert pipe.get_results(block=True, timeout=5_000) == [1, 2, 3, 4]


def test_group_completion_callback_fires_once(database_broker: DatabaseBroker, running_worker: Worker) -> None:
    fired: list[list[int]] = []

    @actor(broker=database_broker, actor_name=unique("square"), store_results=True)
    def square(n: int) -> int:
        return n * n

    @actor(broker=database_broker, actor_name=unique("collect"))
    def collect(results: list[int]) -> None:
        fired.append(results)

    members = group([square.message(n) for n in range(40)])
    members.add_completion_callback(collect.message(), with_results=True)
    members.run()
    assert members.get_results(block=True, timeout=30_000) == [n * n for n in range(40)]
    wait_until(lambda: fired, timeout=10)
    database_broker.join(collect.queue_name, timeout=10_000)
    assert fired == [[n * n for n in range(40)]]
    assert members.completed_count == 40


def test_group_inside_a_pipeline(database_broker: DatabaseBroker, running_worker: Worker) -> None:
    @actor(broker=database_broker, actor_name=unique("double"), store_results=True)
    def double(n: int) -> int:
        return 2 * n

    @actor(broker=database_broker, actor_name=unique("total"), store_results=True)
    def total(values: list[int]) -> int:
        return sum(values)

    pipe = pipeline([group([double.message(n) for n in range(10)]), total.message()]).run()
    assert pipe.get_result(block=True, timeout=30_000) == 90


def test_failed_member_fails_the_group(database_broker: DatabaseBroker, running_worker: Worker) -> None:
    @actor(broker=database_broker, actor_name=unique("maybe"), store_results=True, max_retries=0)
    def maybe(n: int) -> int:
        if n == 3:
            raise RuntimeError("three is bad")
        return n

    members = group([maybe.message(n) for n in range(5)]).run()
    with pytest.raises(ResultFailure, match="three is bad"):
        members.get_results(block=True, timeout=20_000)
