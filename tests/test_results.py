"""Tests for the Results middleware and the StubBackend."""

from __future__ import annotations

import threading
import time

import pytest

from django_actors import Message, Worker, actor
from django_actors.brokers.stub import StubBroker
from django_actors.middleware import Retries
from django_actors.results import ResultFailure, ResultMissing, Results, ResultTimeout
from django_actors.results.backend import DEFAULT_RESULT_TTL
from django_actors.results.backends.stub import StubBackend

from .redis_helpers import wait_for


@pytest.fixture
def backend():
    return StubBackend()


@pytest.fixture
def broker(backend):
    broker = StubBroker(middleware=[Retries(min_backoff=1, max_backoff=5), Results(backend=backend)])
    yield broker
    broker.close()


def make_message(**kwargs):
    return Message(queue_name="default", actor_name="a", args=(), kwargs={}, options={}, **kwargs)


# The middleware ---------------------------------------------------------------------------


def test_store_results_stores_the_return_value(broker, worker, backend):
    @actor(broker=broker, store_results=True)
    def add(a, b):
        return {"sum": a + b, "parts": [a, b]}

    message = add.send(2, 3)
    assert message.get_result(backend=backend, block=True, timeout=5000) == {"sum": 5, "parts": [2, 3]}
    assert backend.get_result(message.message_id) == {"sum": 5, "parts": [2, 3]}


def test_none_is_a_stored_result(broker, worker, backend):
    @actor(broker=broker, store_results=True)
    def nothing():
        return None

    message = nothing.send()
    broker.join("default", timeout=5000)
    assert message.get_result(backend=backend) is None


def test_results_are_not_stored_without_the_option(broker, worker, backend):
    @actor(broker=broker)
    def unstored():
        return 1

    message = unstored.send()
    broker.join("default", timeout=5000)
    with pytest.raises(ResultMissing):
        message.get_result(backend=backend)


def test_store_results_as_a_message_option(broker, worker, backend):
    @actor(broker=broker)
    def sometimes():
        return "stored"

    message = sometimes.send_with_options(store_results=True)
    assert message.get_result(backend=backend, block=True, timeout=5000) == "stored"


def test_the_middleware_default_stores_every_result(backend):
    broker = StubBroker(middleware=[Results(backend=backend, store_results=True)])

    @actor(broker=broker)
    def implicit():
        return "yes"

    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        assert implicit.send().get_result(backend=backend, block=True, timeout=5000) == "yes"
    finally:
        worker.stop()


def test_result_missing_when_not_blocking(backend):
    with pytest.raises(ResultMissing, match="No result yet"):
        make_message().get_result(backend=backend)


def test_result_timeout_when_blocking(backend):
    begin = time.monotonic()
    with pytest.raises(ResultTimeout, match="Timed out"):
        make_message().get_result(backend=backend, block=True, timeout=100)
    assert 0.09 <= time.monotonic() - begin < 2


def test_a_failure_is_stored_with_its_type_and_message(broker, worker, backend):
    @actor(broker=broker, store_results=True, max_retries=0)
    def explodes():
        raise ZeroDivisionError("division by zero, sadly")

    message = explodes.send()
    with pytest.raises(ResultFailure) as info:
        message.get_result(backend=backend, block=True, timeout=5000)
    assert info.value.orig_exc_type == "ZeroDivisionError"
    assert info.value.orig_exc_msg == "division by zero, sadly"
    assert info.value.message_id == message.message_id


def test_a_failure_is_stored_only_once_retries_are_exhausted(broker, worker, backend):
    attempts = []

    @actor(broker=broker, store_results=True, max_retries=2)
    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise ValueError("not yet")
        return "third time"

    message = flaky.send()
    assert message.get_result(backend=backend, block=True, timeout=5000) == "third time"
    assert len(attempts) == 3


def test_a_failure_of_a_message_without_store_results_is_not_stored(broker, worker, backend):
    @actor(broker=broker, max_retries=0)
    def explodes():
        raise ValueError

    message = explodes.send()
    broker.join("default", timeout=5000, fail_fast=False)
    with pytest.raises(ResultMissing):
        message.get_result(backend=backend)


def test_a_result_that_cannot_be_encoded_is_a_failure_not_a_hang(broker, worker, backend):
    @actor(broker=broker, store_results=True)
    def returns_a_set():
        return {1, 2, 3}

    message = returns_a_set.send()
    begin = time.monotonic()
    with pytest.raises(ResultFailure, match="cannot be encoded") as info:
        message.get_result(backend=backend, block=True, timeout=5000)
    assert time.monotonic() - begin < 4
    assert info.value.orig_exc_type == "TypeError"


def test_result_ttl_expires_results(broker, worker, backend):
    @actor(broker=broker, store_results=True, result_ttl=100)
    def short_lived():
        return "here"

    message = short_lived.send()
    assert message.get_result(backend=backend, block=True, timeout=5000) == "here"

    def gone():
        try:
            message.get_result(backend=backend)
        except ResultMissing:
            return True
        return False

    wait_for(gone, timeout=2)


def test_result_ttl_as_a_message_option(broker, worker, backend):
    @actor(broker=broker, store_results=True, result_ttl=600_000)
    def lives():
        return "here"

    message = lives.send_with_options(result_ttl=50)
    assert message.get_result(backend=backend, block=True, timeout=5000) == "here"
    entry = backend._values[backend.build_message_key(message)]
    assert entry[1] - time.monotonic() <= 0.05


def test_the_middleware_ttl_default_and_the_backend_default(backend):
    broker = StubBroker(middleware=[Results(backend=backend, store_results=True, result_ttl=30_000)])
    fallback = StubBackend()
    other = StubBroker(middleware=[Results(backend=fallback, store_results=True)])

    @actor(broker=broker)
    def kept():
        return 1

    @actor(broker=other)
    def kept_default():
        return 1

    workers = [Worker(b, worker_timeout=50, worker_threads=1) for b in (broker, other)]
    for w in workers:
        w.start()
    try:
        first = kept.send()
        second = kept_default.send()
        first.get_result(backend=backend, block=True, timeout=5000)
        second.get_result(backend=fallback, block=True, timeout=5000)
    finally:
        for w in workers:
            w.stop()
    remaining = backend._values[backend.build_message_key(first)][1] - time.monotonic()
    assert 25 < remaining <= 30
    remaining = fallback._values[fallback.build_message_key(second)][1] - time.monotonic()
    assert DEFAULT_RESULT_TTL / 1000 - 5 < remaining <= DEFAULT_RESULT_TTL / 1000


def test_a_blocking_caller_is_woken_by_the_result(broker, worker, backend):
    release = threading.Event()

    @actor(broker=broker, store_results=True)
    def waits():
        release.wait(5)
        return "woken"

    message = waits.send()
    threading.Timer(0.05, release.set).start()
    assert message.get_result(backend=backend, block=True, timeout=5000) == "woken"


def test_results_middleware_without_a_backend_stores_nothing():
    broker = StubBroker(middleware=[Results(store_results=True)])

    @actor(broker=broker)
    def fine():
        return 1

    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        fine.send()
        broker.join("default", timeout=5000)
    finally:
        worker.stop()
    assert broker.dead_letters == []


# The stub backend ---------------------------------------------------------------------------


def test_backend_keys_are_namespaced_by_message_id(backend):
    message = make_message()
    assert backend.build_message_key(message) == f"django-actors-results:m:{message.message_id}"
    assert backend.build_message_key(message.message_id) == backend.build_message_key(message)
    assert StubBackend(namespace="ns").build_message_key("x") == "ns:m:x"


def test_backend_store_and_get_by_id(backend):
    message = make_message()
    backend.store_result(message, [1, "two"], ttl=1000)
    assert backend.get_result(message.message_id) == [1, "two"]
    assert backend.get_result(message, block=True, timeout=10) == [1, "two"]


def test_backend_store_of_an_unencodable_value_is_a_type_error(backend):
    message = make_message()
    with pytest.raises(TypeError):
        backend.store_result(message, object(), ttl=1000)
    with pytest.raises(ResultMissing):
        backend.get_result(message)


def test_backend_store_exception_without_an_exception_uses_the_reason(backend):
    message = make_message()
    backend.store_exception(message, None, ttl=1000, reason="dead-lettered")
    with pytest.raises(ResultFailure) as info:
        backend.get_result(message)
    assert info.value.orig_exc_type == "Failed"
    assert info.value.orig_exc_msg == "dead-lettered"


def test_backend_values_expire(backend):
    backend._store_many({"k": 1}, ttl=30)
    assert backend._get("k") == 1
    wait_for(lambda: backend._get("k") is None, timeout=2)


def test_backend_wait_wakes_on_store(backend):
    threading.Timer(0.05, backend._store_many, args=({"k": "v"}, 1000)).start()
    begin = time.monotonic()
    assert backend.wait("k", timeout=5000) == "v"
    assert time.monotonic() - begin < 4
    assert backend.wait("missing", timeout=20) is None


def test_backend_get_many_keeps_order_and_missing(backend):
    backend._store_many({"a": 1, "c": 3}, ttl=1000)
    assert backend._get_many(["c", "b", "a"]) == [3, None, 1]


def test_backend_sets_count_members_once(backend):
    assert backend._add_member("s", 1, ttl=1000) == (True, 1)
    assert backend._add_member("s", 2, ttl=1000, records={"r": "x"}) == (True, 2)
    assert backend._add_member("s", 1, ttl=1000) == (False, 2)
    assert backend._get("r") == "x"
    assert backend._count_members(["s", "nope"]) == [2, 0]


def test_backend_sets_expire(backend):
    backend._add_member("s", 1, ttl=30)
    wait_for(lambda: backend._count_members(["s"]) == [0], timeout=2)
    assert backend._add_member("s", 1, ttl=1000) == (True, 1)


def test_backend_claim_is_set_if_absent_or_own(backend):
    assert backend._claim("c", "token-a", ttl=1000)
    assert backend._claim("c", "token-a", ttl=1000)
    assert not backend._claim("c", "token-b", ttl=1000)


def test_backend_claim_is_atomic_across_threads(backend):
    winners = []
    barrier = threading.Barrier(8, timeout=5)

    def contend(token):
        barrier.wait()
        if backend._claim("race", token, ttl=1000):
            winners.append(token)

    threads = [threading.Thread(target=contend, args=(f"t{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1


def test_backend_delete_many_and_flush(backend):
    backend._store_many({"a": 1, "b": 2}, ttl=1000)
    backend._add_member("s", 1, ttl=1000)
    backend._delete_many(["a", "s"])
    assert backend._get_many(["a", "b"]) == [None, 2]
    assert backend._count_members(["s"]) == [0]
    backend.flush()
    assert backend._get("b") is None
