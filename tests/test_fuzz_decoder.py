"""Fuzzing the decode paths with hypothesis: arbitrary bytes, arbitrary JSON
and arbitrary message-shaped objects never raise anything but
``DecodeError`` from ``Message.decode`` or the signing encoder; the brokers'
decode paths (stub, Redis, database consumers) never raise at all (they turn
garbage into a failed message with a reason); and a worker fed arbitrary
payloads keeps running and accounts for every one of them."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_actors import actor
from django_actors import encoder as encoder_module
from django_actors.broker import MessageProxy, default_middleware
from django_actors.brokers.stub import StubBroker, StubConsumer
from django_actors.encoder import JSONEncoder
from django_actors.errors import DecodeError
from django_actors.message import REQUIRED_FIELDS, Message
from django_actors.middleware import CurrentMessage
from django_actors.results import Results
from django_actors.results.backends.stub import StubBackend
from django_actors.signing import PREFIX, SigningEncoder
from django_actors.worker import Worker

QUEUE = "fuzz"

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)
#: Objects shaped like messages: every field present or not, each any JSON value or a plausible one.
plausible = {
    "queue_name": st.just(QUEUE) | st.text(max_size=5),
    "actor_name": st.sampled_from(["ok", "nope", ""]),
    "args": st.lists(json_values, max_size=3),
    "kwargs": st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    "options": st.dictionaries(
        st.sampled_from(["retries", "eta", "composition", "pipe_ignore", "x_custom", "on_success"]), json_values
    ),
    "message_id": st.uuids().map(str) | st.text(max_size=5),
    "message_timestamp": st.integers() | json_values,
}
message_like = st.fixed_dictionaries(
    {},
    optional={name: plausible.get(name, json_values) | json_values for name in (*REQUIRED_FIELDS, "message_timestamp")},
)
payloads = (
    st.binary(max_size=300)
    | json_values.map(lambda value: json.dumps(value).encode())
    | message_like.map(lambda value: json.dumps(value).encode())
    | message_like.map(lambda value: json.dumps(value).encode()[: len(json.dumps(value)) // 2])
)


@pytest.fixture(autouse=True)
def restore_encoder() -> Iterator[None]:
    previous = encoder_module._encoder
    encoder_module._encoder = JSONEncoder()
    yield
    encoder_module._encoder = previous


def decodes_or_raises_decode_error(data: bytes) -> Message[Any] | None:
    try:
        return Message.decode(data)
    except DecodeError:
        return None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=500))
def test_arbitrary_bytes_only_ever_raise_decode_error(data: bytes) -> None:
    decodes_or_raises_decode_error(data)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_only_ever_raises_decode_error(value: Any) -> None:
    decodes_or_raises_decode_error(json.dumps(value).encode())


@settings(max_examples=500, deadline=None)
@given(message_like)
def test_message_shaped_objects_decode_to_valid_messages_or_raise_decode_error(fields: dict[str, Any]) -> None:
    message = decodes_or_raises_decode_error(json.dumps(fields).encode())
    if message is not None:  # what decodes is a real message: it encodes again, the same
        assert Message.decode(message.encode()) == message
        assert message.actor_name and message.queue_name and message.message_id


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=60))
def test_the_signing_encoder_only_ever_raises_decode_error(data: bytes, noise: bytes) -> None:
    encoder = SigningEncoder("fuzz key")
    for candidate in (data, PREFIX + data, PREFIX + noise[:43] + b"." + data):
        with contextlib.suppress(DecodeError):
            encoder.decode(candidate)


def test_deep_nesting_and_huge_payloads_are_decode_errors() -> None:
    for data in (b"[" * 100_000, b'{"a":' * 100_000, b"[" * 100_000 + b"]" * 100_000):
        with pytest.raises(DecodeError):
            Message.decode(data)


class Raising(JSONEncoder):
    """A custom encoder with its own exceptions."""

    def decode(self, data: bytes) -> dict[str, Any]:
        raise KeyError("custom encoders fail in their own ways")


def test_a_custom_encoders_own_errors_become_decode_errors() -> None:
    encoder_module._encoder = Raising()
    with pytest.raises(DecodeError, match="KeyError"):
        Message.decode(b"{}")


# The brokers' decode paths ------------------------------------------------------------------


def check_proxy(proxy: MessageProxy) -> None:
    """A decode path's result: a runnable message, or a failed one with a reason."""
    if proxy.failed:
        assert proxy.fail_reason
    else:
        assert proxy.message.actor_name and proxy.message.message_id


@settings(max_examples=300, deadline=None)
@given(payloads)
def test_the_stub_consumer_never_raises(data: bytes) -> None:
    broker = StubBroker(middleware=[], max_message_size=200)
    check_proxy(StubConsumer(broker, QUEUE, 0)._decode(data))


@settings(max_examples=300, deadline=None)
@given(payloads)
def test_the_redis_consumer_never_raises(data: bytes) -> None:
    from django_actors.brokers.redis import RedisBroker, RedisConsumer

    broker = RedisBroker(url="redis://127.0.0.1:1/0", middleware=[], max_message_size=200)  # never connects
    broker.declare_queue(QUEUE)
    consumer = RedisConsumer(broker, QUEUE, prefetch=1, timeout=0)
    check_proxy(consumer._proxy("0000000000000001:0", data))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payloads)
def test_the_database_consumer_never_raises(data: bytes) -> None:
    from django_actors.brokers.database import DatabaseBroker, DatabaseConsumer

    broker = DatabaseBroker(middleware=[], max_message_size=200)
    consumer = DatabaseConsumer(broker, QUEUE, 1, 0)
    check_proxy(consumer._proxy((1, "row-message-id", "", 0, 0, data)))


# A worker fed garbage -------------------------------------------------------------------------


def test_a_worker_fed_arbitrary_payloads_keeps_going_and_accounts_for_each() -> None:
    broker = StubBroker(
        middleware=[*default_middleware(), CurrentMessage(), Results(backend=StubBackend())], max_message_size=400
    )
    ran: list[str] = []
    lock = threading.Lock()

    @actor(broker=broker, queue_name=QUEUE, actor_name="ok", max_retries=0)
    def ok(*args: Any, **kwargs: Any) -> None:
        with lock:
            ran.append(CurrentMessage.get_current_message().message_id)

    worker = Worker(broker, worker_threads=2, worker_timeout=20)
    worker.start()

    @settings(max_examples=60, deadline=None)
    @given(st.lists(payloads, min_size=1, max_size=8))
    def feed(batch: list[bytes]) -> None:
        ran.clear()
        broker.flush_all()
        for data in batch:
            broker.put_raw(QUEUE, data)
        sentinel = ok.send()
        broker.join(QUEUE, timeout=10_000, fail_fast=False)
        assert sentinel.message_id in ran
        # Every payload ran or was dead-lettered (a run may enqueue more: on_success).
        assert len(ran) - 1 + len(broker.dead_letters) >= len(batch)
        assert all(thread.is_alive() for thread in worker.workers)
        assert all(thread.is_alive() for thread in worker.consumers.values())

    try:
        feed()
    finally:
        worker.stop(timeout=5_000)
