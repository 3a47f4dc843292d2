"""Secrets stay secret: broker URLs are masked in logs, in ``runworkers``'s
banner, in ``repr`` of the Redis broker and in the admin; argument and
result previews in the admin mirror hide the keys named in
``DJANGO_ACTORS["REDACT"]``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import RequestFactory, override_settings

from django_actors import Message
from django_actors.broker import default_middleware, set_broker
from django_actors.brokers.stub import StubBroker
from django_actors.errors import ConnectionClosed
from django_actors.mirror import Recorder, preview_call, preview_value
from django_actors.redaction import MASK, is_sensitive, mask_url, mask_urls, redact, redact_call

from .redis_helpers import free_port

SECRET = "s3cret-Pa55"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (f"redis://:{SECRET}@cache.internal:6379/0", "redis://:***@cache.internal:6379/0"),
        (f"rediss://app:{SECRET}@cache.internal:6380/1", "rediss://app:***@cache.internal:6380/1"),
        (f"redis://127.0.0.1/0?password={SECRET}&db=2", "redis://127.0.0.1/0?password=***&db=2"),
        (f"unix:///run/redis.sock?db=1&pwd={SECRET}", "unix:///run/redis.sock?db=1&pwd=***"),
        (f"postgres://u:{SECRET}@db:5432/app?sslmode=require", "postgres://u:***@db:5432/app?sslmode=require"),
        (f"amqp://guest:{SECRET}@rabbit//", "amqp://guest:***@rabbit//"),
        ("redis://app@cache.internal/0", "redis://app@cache.internal/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (f"redis://[::1:{SECRET}", "<unparsable URL>"),
    ],
)
def test_mask_url_hides_passwords_and_keeps_the_rest(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert SECRET not in mask_url(url)


def test_mask_urls_hides_the_passwords_of_urls_inside_a_text() -> None:
    text = (
        f"cannot reach redis://:{SECRET}@10.0.0.1:6379/0 nor rediss://user:{SECRET}@replica/1 "
        f"(fallback redis://host/0?password={SECRET}); plain text stays: a:b@c"
    )
    masked = mask_urls(text)
    assert SECRET not in masked
    assert "redis://:***@10.0.0.1:6379/0" in masked
    assert "rediss://user:***@replica/1" in masked
    assert "?password=***" in masked
    assert masked.endswith("plain text stays: a:b@c")
    assert mask_urls("nothing to hide") == "nothing to hide"


# Redacting values ------------------------------------------------------------------------------


def test_redact_hides_sensitive_keys_recursively_and_leaves_the_rest() -> None:
    value = {
        "user": "ada",
        "password": SECRET,
        "DB_Password": SECRET,
        "X-Api-Key": SECRET,
        "Authorization": f"Bearer {SECRET}",
        "nested": [{"refresh_token": SECRET, "n": 1}, ({"client_secret": SECRET},)],
        "dsn": f"redis://:{SECRET}@host/0",
        7: "a non-string key",
    }
    redacted = redact(value)
    assert SECRET not in repr(redacted)
    assert redacted["user"] == "ada"
    assert redacted["password"] == redacted["DB_Password"] == redacted["X-Api-Key"] == MASK
    assert redacted["Authorization"] == MASK
    assert redacted["nested"][0] == {"refresh_token": MASK, "n": 1}
    assert redacted["nested"][1] == ({"client_secret": MASK},)
    assert redacted["dsn"] == "redis://:***@host/0"
    assert redacted[7] == "a non-string key"
    assert value["password"] == SECRET  # the original is untouched


def test_redact_follows_the_redact_setting() -> None:
    config = {"BROKER": {"BACKEND": "django_actors.brokers.stub.StubBroker"}, "REDACT": ["ssn", "pin"]}
    with override_settings(DJANGO_ACTORS=config):
        redacted = redact({"ssn": "123-45", "user_pin": "0000", "password": "kept: not in the list"})
        assert redacted == {"ssn": MASK, "user_pin": MASK, "password": "kept: not in the list"}
    with override_settings(DJANGO_ACTORS={"REDACT": []}):
        assert redact({"password": "x", "url": f"redis://:{SECRET}@h/0"}) == {
            "password": "x",
            "url": "redis://:***@h/0",  # URLs are masked whatever the list
        }
    from django.core.exceptions import ImproperlyConfigured

    from django_actors.conf import get_settings

    with override_settings(DJANGO_ACTORS={"REDACT": "password"}), pytest.raises(ImproperlyConfigured, match="REDACT"):
        get_settings()


def test_redact_defaults_and_sensitive_names() -> None:
    from django_actors.conf import get_settings

    assert get_settings().redact == ("password", "token", "secret", "api_key", "authorization")
    for name in ("password", "PASSWORD", "new_password", "csrftoken", "api-key", "Authorization", "aws_secret"):
        assert is_sensitive(name, get_settings().redact), name
    for name in ("user", "email", "pass_count", 3, None):
        assert not is_sensitive(name, get_settings().redact), name


def test_redact_survives_deep_and_odd_values() -> None:
    deep: Any = {"password": SECRET}
    for _ in range(200):
        deep = {"next": deep}
    assert SECRET not in repr(redact(deep))
    odd = {"password": object(), "items": {1, 2}, "bytes": b"token=1"}
    redacted = redact(odd)
    assert redacted["password"] == MASK
    assert redacted["items"] == {1, 2}


def test_redact_call_redacts_keyword_arguments_by_name() -> None:
    args, kwargs = redact_call(("ada", {"token": SECRET}), {"password": SECRET, "retries": 3})
    assert args == ("ada", {"token": MASK})
    assert kwargs == {"password": MASK, "retries": 3}


# The admin mirror's previews -------------------------------------------------------------------


def test_mirror_previews_are_redacted() -> None:
    call = preview_call(
        ("ada", {"api_key": SECRET}, f"redis://:{SECRET}@h/0"), {"password": SECRET, "headers": {"Authorization": 1}}
    )
    assert SECRET not in call
    assert "'ada'" in call and "password='***'" in call and "'Authorization': '***'" in call
    assert SECRET not in preview_call((f"redis://u:{SECRET}@h/0",), {})  # the short-arguments fast path too
    assert SECRET not in preview_value({"token": SECRET, "ok": True})
    assert preview_value({"ok": True}) == "{'ok': True}"


@pytest.mark.django_db(transaction=True)
def test_mirrored_messages_show_no_secret_in_the_admin_rows() -> None:
    from django_actors.middleware.mirror import Mirror
    from django_actors.mirror import ENQUEUE, SUCCESS
    from django_actors.models.mirror import MessageRecord

    broker = StubBroker(middleware=[Mirror(flush_interval=60_000), *default_middleware()])
    recorder = Recorder(flush_interval=60_000)
    message = Message(
        queue_name="q", actor_name="login", args=("ada",), kwargs={"password": SECRET, "remember": True}, options={}
    )
    recorder.record(broker, ENQUEUE, message)
    recorder.record(broker, SUCCESS, message, {"session_token": SECRET, "user": "ada"})
    recorder.flush()
    recorder.stop()
    row = MessageRecord.objects.get(pk=message.message_id)
    assert SECRET not in row.args_preview and SECRET not in row.result_preview
    assert "password='***'" in row.args_preview
    assert "'session_token': '***'" in row.result_preview


# Brokers, logs, runworkers and the admin dashboard ------------------------------------------------


def test_repr_of_a_redis_broker_masks_its_url() -> None:
    from django_actors.brokers.redis import RedisBroker

    broker = RedisBroker(url=f"redis://app:{SECRET}@127.0.0.1:6379/3", middleware=[])
    assert repr(broker) == "<RedisBroker redis://app:***@127.0.0.1:6379/3 namespace='django-actors'>"
    by_options = RedisBroker(host="127.0.0.1", port=6390, password=SECRET, middleware=[])
    assert SECRET not in repr(by_options)
    assert "127.0.0.1:6390" in repr(by_options)


def test_a_worker_that_cannot_reach_redis_logs_no_password(caplog: pytest.LogCaptureFixture) -> None:
    from django_actors.brokers.redis import RedisBroker
    from django_actors.worker import Worker

    url = f"redis://app:{SECRET}@127.0.0.1:{free_port()}/0"  # nothing listens there
    broker = RedisBroker(url=url, middleware=default_middleware(), socket_connect_timeout=0.2)
    broker.declare_queue("q")
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ConnectionClosed) as caught:
            broker.enqueue(Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={}))
        worker = Worker(broker, worker_threads=1, worker_timeout=50)
        worker.start()
        try:
            from .redis_helpers import wait_for

            wait_for(lambda: any("lost its connection" in r.getMessage() for r in caplog.records), 10)
        finally:
            worker.stop(timeout=2_000)
            broker.close()
    assert SECRET not in str(caught.value)
    logged = "\n".join(r.getMessage() + (str(r.exc_info[1]) if r.exc_info else "") for r in caplog.records)
    assert logged and SECRET not in logged


def test_the_runworkers_banner_masks_urls() -> None:
    from django_actors.supervisor import Supervisor, SupervisorOptions

    config = {
        "BROKER": {
            "BACKEND": "django_actors.brokers.redis.RedisBroker",
            "OPTIONS": {"url": f"redis://:{SECRET}@r:6379/0"},
        },
        "RESULTS": {
            "BACKEND": "django_actors.results.backends.redis.RedisBackend",
            "OPTIONS": {"url": f"redis://u:{SECRET}@r:6379/1"},
        },
    }
    with override_settings(DJANGO_ACTORS=config):
        banner = Supervisor(SupervisorOptions(processes=1, threads=1)).banner()
    assert SECRET not in banner
    assert "redis://:***@r:6379/0" in banner and "redis://u:***@r:6379/1" in banner


class LeakyBroker(StubBroker):
    """A broker whose errors quote its URL, as some client libraries' do."""

    leaking = False

    def get_declared_queues(self) -> set[str]:
        if self.leaking:
            raise ConnectionClosed(f"cannot reach redis://:{SECRET}@10.0.0.9:6379/0")
        return super().get_declared_queues()


@pytest.fixture
def leaky_broker() -> Iterator[StubBroker]:
    from django_actors import broker as broker_module

    previous = broker_module._broker
    broker = LeakyBroker(middleware=[])
    set_broker(broker)
    broker.leaking = True
    yield broker
    broker_module._broker = previous


@pytest.mark.django_db
def test_the_admin_dashboard_masks_urls_in_broker_errors(leaky_broker: StubBroker) -> None:
    from django_actors.admin_views import dashboard_context

    context = dashboard_context(RequestFactory().get("/admin/"))
    assert "10.0.0.9" in context["broker_error"]
    assert SECRET not in context["broker_error"]
    assert "redis://:***@10.0.0.9:6379/0" in context["broker_error"]
