"""Tests for django_actors.message: fields, encoding, decoding, copies, results."""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
import uuid

import pytest

from django_actors import DecodeError, DjangoActorsError, Message, pipeline
from django_actors.brokers.stub import StubBroker
from django_actors.message import REQUIRED_FIELDS, current_millis
from django_actors.results import ResultFailure, ResultMissing
from django_actors.results.backends.stub import StubBackend


def make_message(**overrides):
    fields = {
        "queue_name": "default",
        "actor_name": "add",
        "args": (1, 2),
        "kwargs": {"c": 3},
        "options": {"max_retries": 1},
    }
    fields.update(overrides)
    return Message(**fields)


def encoded_dict(**overrides):
    data = make_message().asdict()
    data["args"] = list(data["args"])
    data.update(overrides)
    return data


def test_defaults_give_a_uuid_id_and_a_current_timestamp():
    before = current_millis()
    message = make_message()
    after = current_millis()
    assert str(uuid.UUID(message.message_id)) == message.message_id
    assert before <= message.message_timestamp <= after
    assert make_message().message_id != message.message_id


def test_fields_are_kept_as_given():
    message = make_message()
    assert message.queue_name == "default"
    assert message.actor_name == "add"
    assert message.args == (1, 2)
    assert message.kwargs == {"c": 3}
    assert message.options == {"max_retries": 1}


def test_messages_are_immutable():
    message = make_message()
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.queue_name = "other"  # type: ignore[misc]


def test_encode_decode_round_trip():
    message = make_message(args=(1, "two", [3.5, None], {"k": True}), kwargs={"x": "é"})
    decoded = Message.decode(message.encode())
    assert decoded == message
    assert isinstance(decoded.args, tuple)


def test_encode_is_compact_utf8_json():
    data = make_message(kwargs={"name": "Zoë"}).encode()
    assert isinstance(data, bytes)
    assert b", " not in data and b": " not in data
    assert "Zoë".encode() in data
    assert json.loads(data)["actor_name"] == "add"


def test_asdict_holds_every_wire_field():
    message = make_message()
    data = message.asdict()
    assert set(data) == {*REQUIRED_FIELDS, "message_timestamp"}
    assert data["message_id"] == message.message_id
    assert data["message_timestamp"] == message.message_timestamp


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"not json at all", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[1, 2, 3]", "not an object: list"),
        (b'"a string"', "not an object: str"),
        (b"", "not valid JSON"),
    ],
)
def test_decode_garbage_raises_decode_error(payload, expected):
    with pytest.raises(DecodeError, match=expected) as info:
        Message.decode(payload)
    assert info.value.data == payload
    assert isinstance(info.value, DjangoActorsError)


@pytest.mark.parametrize("field", REQUIRED_FIELDS)
def test_decode_names_a_missing_field(field):
    data = encoded_dict()
    del data[field]
    with pytest.raises(DecodeError, match=f"missing field\\(s\\): {field}"):
        Message.decode(json.dumps(data).encode())


def test_decode_names_every_missing_field():
    with pytest.raises(DecodeError) as info:
        Message.decode(b'{"queue_name": "q"}')
    text = str(info.value)
    for field in ("actor_name", "args", "kwargs", "options", "message_id"):
        assert field in text
    assert "queue_name" not in text.split(":", 1)[1]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("queue_name", 1, "queue_name must be a non-empty string"),
        ("actor_name", "", "actor_name must be a non-empty string"),
        ("message_id", None, "message_id must be a non-empty string"),
        ("args", "oops", "args must be a list"),
        ("kwargs", [], "kwargs must be an object"),
        ("options", "x", "options must be an object"),
        ("message_timestamp", "yesterday", "message_timestamp must be an integer"),
        ("message_timestamp", True, "message_timestamp must be an integer"),
    ],
)
def test_decode_names_a_field_of_the_wrong_type(field, value, expected):
    with pytest.raises(DecodeError, match=expected):
        Message.decode(json.dumps(encoded_dict(**{field: value})).encode())


def test_decode_without_timestamp_uses_now():
    data = encoded_dict()
    del data["message_timestamp"]
    before = current_millis()
    message = Message.decode(json.dumps(data).encode())
    assert message.message_timestamp >= before


def test_copy_keeps_the_id_and_copies_options():
    message = make_message()
    copy = message.copy()
    assert copy == message
    assert copy.message_id == message.message_id
    assert copy.options is not message.options
    copy.options["retries"] = 3
    assert "retries" not in message.options


def test_copy_replaces_given_attributes():
    message = make_message()
    copy = message.copy(queue_name="other", options={"retries": 1})
    assert copy.queue_name == "other"
    assert copy.options == {"retries": 1}
    assert copy.message_id == message.message_id
    assert message.queue_name == "default"


def test_message_datetime_is_aware_utc():
    message = make_message(message_timestamp=1_700_000_000_123)
    assert message.message_datetime == datetime.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=datetime.UTC)


def test_str_reads_like_a_call():
    assert str(make_message(args=(1, "a"), kwargs={"b": 2})) == "add(1, 'a', b=2)"


def test_or_builds_a_pipeline():
    first, second, third = make_message(), make_message(), make_message()
    pipe = first | second
    assert isinstance(pipe, pipeline)
    assert len(pipe) == 2
    longer = first | second | third
    assert isinstance(longer, pipeline)
    assert len(longer) == 3


def test_get_result_with_an_explicit_backend():
    backend = StubBackend()
    message = make_message()
    with pytest.raises(ResultMissing):
        message.get_result(backend=backend)
    backend.store_result(message, {"sum": 3}, ttl=10_000)
    assert message.get_result(backend=backend) == {"sum": 3}
    assert message.get_result(backend=backend, block=True, timeout=10) == {"sum": 3}


def test_get_result_defaults_to_the_global_brokers_backend(stub_broker: StubBroker):
    message = make_message()
    stub_broker.get_results_backend().store_result(message, 42, ttl=10_000)
    assert message.get_result() == 42


def test_get_result_raises_a_stored_failure():
    backend = StubBackend()
    message = make_message()
    backend.store_exception(message, ValueError("bad input"), ttl=10_000)
    with pytest.raises(ResultFailure) as info:
        message.get_result(backend=backend)
    assert info.value.orig_exc_type == "ValueError"
    assert info.value.orig_exc_msg == "bad input"


def test_get_result_blocks_until_stored():
    import threading

    backend = StubBackend()
    message = make_message()
    waiting = threading.Event()

    def store_later():
        waiting.wait(5)
        backend.store_result(message, "done", ttl=10_000)

    thread = threading.Thread(target=store_later)
    thread.start()
    start = time.monotonic()
    waiting.set()
    assert message.get_result(backend=backend, block=True, timeout=5000) == "done"
    assert time.monotonic() - start < 5
    thread.join()
