"""Tests for django_actors.encoder and for encoding errors at send time."""

from __future__ import annotations

import datetime
import decimal
import logging
import pickle

import pytest

from django_actors import (
    DecodeError,
    JSONEncoder,
    Message,
    PickleEncoder,
    actor,
    get_encoder,
    set_encoder,
)
from django_actors import encoder as encoder_module
from django_actors.brokers.stub import StubBroker


@pytest.fixture(autouse=True)
def restore_encoder():
    previous = encoder_module._encoder
    yield
    encoder_module._encoder = previous


@pytest.fixture
def broker():
    broker = StubBroker()
    yield broker
    broker.close()


def queued(broker, queue_name="default"):
    queue = broker.queues[queue_name]
    return len(queue.ready) + len(queue.delayed)


def test_json_is_the_default_encoder():
    encoder_module._encoder = None
    assert type(get_encoder()) is JSONEncoder
    assert get_encoder() is get_encoder()


def test_set_encoder_replaces_the_global_encoder():
    encoder = JSONEncoder()
    set_encoder(encoder)
    assert get_encoder() is encoder


def test_json_round_trip():
    encoder = JSONEncoder()
    data = {"s": "héllo ✓", "n": None, "f": 1.5, "i": 2**62, "l": [1, [2, {"x": False}]]}
    assert encoder.decode(encoder.encode(data)) == data


def test_json_turns_tuples_into_lists():
    encoder = JSONEncoder()
    assert encoder.decode(encoder.encode({"t": (1, 2)})) == {"t": [1, 2]}


@pytest.mark.parametrize(
    "value",
    [{1, 2}, b"bytes", object(), datetime.date(2024, 1, 1), decimal.Decimal("1.5"), lambda: None],
)
def test_json_rejects_values_it_cannot_encode_with_type_error(value):
    with pytest.raises(TypeError):
        JSONEncoder().encode({"v": value})


def test_json_rejects_circular_structures_with_type_error():
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(TypeError, match=r"[Cc]ircular"):
        JSONEncoder().encode({"v": loop})


@pytest.mark.parametrize("payload", [b"{", b"\x80\x81", b"null", b"42"])
def test_json_decode_errors_are_decode_errors(payload):
    with pytest.raises(DecodeError):
        JSONEncoder().decode(payload)


def test_send_with_an_unencodable_positional_argument_names_it_and_enqueues_nothing(broker):
    @actor(broker=broker)
    def takes_two(a, b):
        pass

    with pytest.raises(TypeError) as info:
        takes_two.send(1, {1, 2})
    text = str(info.value)
    assert "positional argument 1 (set)" in text
    assert "'takes_two'" in text
    assert "JSONEncoder" in text
    assert queued(broker) == 0


def test_send_with_an_unencodable_keyword_argument_names_it_and_enqueues_nothing(broker):
    @actor(broker=broker)
    def takes_when(*, when):
        pass

    with pytest.raises(TypeError, match="keyword argument 'when' \\(datetime\\)"):
        takes_when.send(when=datetime.datetime.now())
    assert queued(broker) == 0


def test_send_with_an_unencodable_option_names_it(broker):
    @actor(broker=broker)
    def plain():
        pass

    with pytest.raises(TypeError, match="option 'custom' \\(object\\)"):
        plain.send_with_options(custom=object())
    assert queued(broker) == 0


def test_delayed_send_with_a_bad_argument_enqueues_nothing(broker):
    @actor(broker=broker)
    def later(a):
        pass

    with pytest.raises(TypeError, match="positional argument 0"):
        later.send_with_options(args=(object(),), delay=1000)
    assert queued(broker) == 0


def test_enqueue_many_encodes_all_before_sending_any(broker):
    @actor(broker=broker)
    def one(a):
        pass

    good = one.message(1)
    bad = one.message(b"raw")
    with pytest.raises(TypeError):
        broker.enqueue_many([good, good.copy(), bad])
    assert queued(broker) == 0


def test_message_encode_reports_circular_arguments():
    loop: dict[str, object] = {}
    loop["self"] = loop
    message = Message(queue_name="q", actor_name="a", args=(loop,), kwargs={}, options={})
    with pytest.raises(TypeError, match="positional argument 0 \\(dict\\)"):
        message.encode()


def test_pickle_encoder_logs_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="django_actors.encoder"):
        PickleEncoder()
    assert any("PickleEncoder" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_pickle_round_trips_what_json_cannot():
    encoder = PickleEncoder()
    data = {"s": {1, 2}, "b": b"x", "d": datetime.date(2024, 1, 1)}
    assert encoder.decode(encoder.encode(data)) == data


def test_pickle_decode_errors_are_decode_errors():
    encoder = PickleEncoder()
    with pytest.raises(DecodeError, match="not a valid pickle"):
        encoder.decode(b"not a pickle")
    with pytest.raises(DecodeError, match="not a dict"):
        encoder.decode(pickle.dumps([1, 2]))


def test_pickle_encode_of_unpicklable_values_is_a_type_error():
    with pytest.raises(TypeError):
        PickleEncoder().encode({"v": lambda: None})


def test_messages_use_the_global_encoder(broker):
    set_encoder(PickleEncoder())

    @actor(broker=broker)
    def gets_set(a):
        pass

    message = gets_set.send({1, 2})
    data = broker.queues["default"].ready[0]
    assert Message.decode(data) == message
    assert Message.decode(data).args == ({1, 2},)
