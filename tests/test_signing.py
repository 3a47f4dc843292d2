"""Message signing (django_actors.signing): forged, unsigned and tampered
messages never run, on the stub, Redis and database brokers; keys rotate;
results are signed too; pickle is never a default and is never unpickled
before the signature is checked."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_actors import Message, actor, pipeline
from django_actors import encoder as encoder_module
from django_actors.broker import default_middleware
from django_actors.encoder import JSONEncoder, PickleEncoder, get_encoder, set_encoder
from django_actors.errors import DecodeError, InvalidSignature
from django_actors.results import Results
from django_actors.signing import PREFIX, SigningEncoder
from django_actors.worker import Worker

from .redis_helpers import wait_for
from .test_bad_input import BROKERS, QUEUE, Bench

KEY = "k" * 40
OLD_KEY = "o" * 40


@pytest.fixture(autouse=True)
def restore_encoder() -> Iterator[None]:
    previous = encoder_module._encoder
    yield
    encoder_module._encoder = previous


# The encoder ---------------------------------------------------------------------------------


def test_signed_payloads_round_trip_and_carry_their_signature() -> None:
    encoder = SigningEncoder(KEY)
    data = {"actor_name": "x", "args": [1, "é"], "n": None}
    signed = encoder.encode(data)
    assert signed.startswith(PREFIX)
    assert signed.endswith(JSONEncoder().encode(data))  # the payload is readable, only authenticated
    assert encoder.decode(signed) == data


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda signed: JSONEncoder().encode({"actor_name": "x"}), "not signed"),
        (lambda signed: signed.replace(b'"x"', b'"y"'), "invalid"),  # payload changed, signature kept
        (lambda signed: signed[:10] + bytes([signed[10] ^ 1]) + signed[11:], "invalid"),  # signature changed
        (lambda signed: signed[: len(PREFIX) + 20], "malformed"),  # truncated in the signature
        (lambda signed: signed[:-3], "invalid"),  # truncated payload
        (lambda signed: SigningEncoder("another key").encode({"actor_name": "x"}), "invalid"),
        (lambda signed: b"", "not signed"),
    ],
    ids=[
        "unsigned",
        "tampered-payload",
        "tampered-signature",
        "truncated-signature",
        "truncated-payload",
        "other-key",
        "empty",
    ],
)
def test_unsigned_or_tampered_payloads_raise_invalid_signature(mangle: Any, reason: str) -> None:
    encoder = SigningEncoder(KEY)
    with pytest.raises(InvalidSignature, match=reason) as caught:
        encoder.decode(mangle(encoder.encode({"actor_name": "x"})))
    assert isinstance(caught.value, DecodeError)  # so every broker dead-letters it


def test_key_rotation_new_key_signs_old_keys_still_verify() -> None:
    old = SigningEncoder(OLD_KEY)
    rotating = SigningEncoder(KEY, fallback_keys=[OLD_KEY])
    assert rotating.decode(old.encode({"a": 1})) == {"a": 1}  # queued before the rotation
    signed_now = rotating.encode({"a": 2})
    assert SigningEncoder(KEY).decode(signed_now) == {"a": 2}  # signed with the new key
    with pytest.raises(InvalidSignature):
        old.decode(signed_now)
    with pytest.raises(InvalidSignature):
        SigningEncoder(KEY).decode(old.encode({"a": 1}))  # fallback dropped: old messages refused


def test_empty_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        SigningEncoder("")
    with pytest.raises(ValueError, match="non-empty"):
        SigningEncoder(KEY, fallback_keys=[""])


def test_the_signing_key_is_not_used_raw() -> None:
    """The HMAC key is derived with a purpose string: a plain HMAC-SHA256 of
    the payload under SIGNING_KEY (what another system might produce with the
    same secret) does not verify."""
    import base64
    import hashlib
    import hmac

    payload = JSONEncoder().encode({"actor_name": "x"})
    raw = base64.urlsafe_b64encode(hmac.new(KEY.encode(), payload, hashlib.sha256).digest())[:43]
    with pytest.raises(InvalidSignature):
        SigningEncoder(KEY).decode(PREFIX + raw + b"." + payload)


# Settings ------------------------------------------------------------------------------------


def test_signing_key_setting_installs_a_signing_encoder() -> None:
    from django_actors.conf import build_broker

    config = {
        "BROKER": {"BACKEND": "django_actors.brokers.stub.StubBroker"},
        "RESULTS": {"BACKEND": "django_actors.results.backends.stub.StubBackend"},
        "SIGNING_KEY": KEY,
        "SIGNING_KEY_FALLBACKS": [OLD_KEY],
    }
    with override_settings(DJANGO_ACTORS=config):
        broker = build_broker()
        encoder = get_encoder()
        assert isinstance(encoder, SigningEncoder)
        assert isinstance(encoder.inner, JSONEncoder)
        assert broker.get_results_backend().encoder is encoder  # results are signed too
        assert encoder.decode(SigningEncoder(OLD_KEY).encode({"a": 1})) == {"a": 1}
        message = Message(queue_name=QUEUE, actor_name="x", args=(), kwargs={}, options={})
        assert message.encode().startswith(PREFIX)


@pytest.mark.parametrize(
    ("config", "complaint"),
    [
        ({"SIGNING_KEY": ""}, "SIGNING_KEY"),
        ({"SIGNING_KEY": b"bytes"}, "SIGNING_KEY"),
        ({"SIGNING_KEY": 12345}, "SIGNING_KEY"),
        ({"SIGNING_KEY": KEY, "SIGNING_KEY_FALLBACKS": OLD_KEY}, "SIGNING_KEY_FALLBACKS"),
        ({"SIGNING_KEY": KEY, "SIGNING_KEY_FALLBACKS": [""]}, "SIGNING_KEY_FALLBACKS"),
        ({"SIGNING_KEY_FALLBACKS": [OLD_KEY]}, "needs a SIGNING_KEY"),
    ],
)
def test_bad_signing_settings_are_refused(config: dict[str, Any], complaint: str) -> None:
    from django_actors.conf import get_settings

    with override_settings(DJANGO_ACTORS=config), pytest.raises(ImproperlyConfigured, match=complaint):
        get_settings()


def test_pickle_is_never_the_default_and_choosing_it_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from django_actors.conf import build_broker

    encoder_module._encoder = None
    assert type(get_encoder()) is JSONEncoder
    build_broker()  # the test settings name no encoder: JSON stays
    assert type(get_encoder()) is JSONEncoder
    config = {
        "BROKER": {"BACKEND": "django_actors.brokers.stub.StubBroker"},
        "RESULTS": None,
        "ENCODER": "django_actors.encoder.PickleEncoder",
    }
    with caplog.at_level(logging.WARNING, logger="django_actors.encoder"), override_settings(DJANGO_ACTORS=config):
        build_broker()
    assert type(get_encoder()) is PickleEncoder
    assert any("PickleEncoder" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# Workers verify before anything runs -----------------------------------------------------


@pytest.fixture(params=BROKERS)
def signed_bench(request: pytest.FixtureRequest) -> Iterator[Bench]:
    set_encoder(SigningEncoder(KEY, fallback_keys=[OLD_KEY]))  # before the backends take theirs
    bench = Bench(request.param, request)
    yield bench
    bench.close()


def test_forged_unsigned_and_tampered_messages_are_dead_lettered_and_never_run(signed_bench: Bench) -> None:
    bench = signed_bench
    encoder = get_encoder()
    assert isinstance(encoder, SigningEncoder)
    genuine = bench.ok.message("genuine")
    unsigned = bench.ok.message("forged, unsigned")
    other_key = bench.ok.message("forged, signed with another key")
    tampered = bench.ok.message("genuine")
    old_key = bench.ok.message("signed with the old key")

    bench.broker.enqueue(genuine)
    bench.put_raw(JSONEncoder().encode(unsigned.asdict()), unsigned.message_id)
    bench.put_raw(SigningEncoder("attacker").encode(other_key.asdict()), other_key.message_id)
    # A genuine signed message whose arguments were changed in the queue.
    signed = encoder.encode(tampered.asdict())
    bench.put_raw(signed.replace(b'"genuine"', b'"TAMPERED"'), tampered.message_id)
    bench.put_raw(SigningEncoder(OLD_KEY).encode(old_key.asdict()), old_key.message_id)
    bench.ok.send("after")

    bench.start()
    wait_for(lambda: len(bench.ran) >= 3, 10, what="the genuine messages")
    bench.join()
    assert sorted(bench.ran) == ["after", "genuine", "signed with the old key"]
    reasons = sorted(reason for _, reason in bench.dead())
    assert len(reasons) == 3, reasons
    assert sum("not signed" in reason for reason in reasons) == 1
    assert sum("signature is invalid" in reason for reason in reasons) == 2


def test_a_forged_pickle_is_never_unpickled(signed_bench: Bench) -> None:
    """With pickle, a forged payload would run code as it is decoded; signed,
    it is refused before it is unpickled."""
    bench = signed_bench
    set_encoder(SigningEncoder(KEY, inner=PickleEncoder()))
    bench.ok.send("genuine")
    exploit = pickle.dumps(Exploit(), protocol=pickle.HIGHEST_PROTOCOL)
    bench.put_raw(exploit)
    bench.put_raw(PREFIX + b"A" * 43 + b"." + exploit)  # a made-up signature
    bench.start()
    wait_for(lambda: bench.ran == ["genuine"], 10, what="the genuine message")
    bench.join()
    assert EXPLOITED == []
    assert len(bench.dead()) == 2
    # The same payload without signing: unpickling it runs the attacker's code.
    with pytest.raises(DecodeError):
        PickleEncoder().decode(exploit)
    assert EXPLOITED == ["pwned"]
    EXPLOITED.clear()


EXPLOITED: list[str] = []


def _exploit() -> None:
    EXPLOITED.append("pwned")


class Exploit:
    def __reduce__(self) -> Any:
        return (_exploit, ())


@pytest.mark.redis
def test_results_are_signed_and_a_tampered_result_is_refused(redis_url: str) -> None:
    from django_actors.brokers.redis import RedisBroker
    from django_actors.results.backends.redis import RedisBackend

    set_encoder(SigningEncoder(KEY))
    backend = RedisBackend(url=redis_url)
    broker = RedisBroker(url=redis_url, middleware=[*default_middleware(), Results(backend=backend)])

    @actor(broker=broker, queue_name=QUEUE, store_results=True)
    def add(a: int, b: int) -> int:
        return a + b

    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        message = add.send(1, 2)
        assert message.get_result(backend=backend, block=True, timeout=10_000) == 3
        key = backend.build_message_key(message)
        stored = backend.client.get(key)
        assert stored.startswith(PREFIX)
        backend.client.set(key, stored.replace(b"3", b"4"))
        with pytest.raises(InvalidSignature):
            message.get_result(backend=backend)
        # A pipeline's next step lives in the results backend: it is signed as well.
        steps = pipeline([add.message(1, 2), add.message(10)], broker=broker).run()
        assert steps.get_result(block=True, timeout=10_000) == 13
    finally:
        worker.stop()
        broker.close()
        backend.close()


def test_signed_messages_work_end_to_end_on_the_stub_broker() -> None:
    from django_actors.brokers.stub import StubBroker
    from django_actors.results.backends.stub import StubBackend

    set_encoder(SigningEncoder(KEY))
    backend = StubBackend()
    broker = StubBroker(middleware=[*default_middleware(), Results(backend=backend)])

    @actor(broker=broker, queue_name=QUEUE, store_results=True)
    def echo(value: Any) -> Any:
        return value

    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        payload = {"nested": [1, 2, {"x": "é"}]}
        message = echo.send(payload)
        assert message.get_result(backend=backend, block=True, timeout=10_000) == payload
        assert broker.dead_letters == []
    finally:
        worker.stop()
