"""The Django-side defaults of DJANGO_ACTORS: where the database hygiene and
signals middleware sit, and why (the parsing itself is in test_settings.py)."""

from __future__ import annotations

from django.test import override_settings

from django_actors.brokers.stub import StubBroker
from django_actors.conf import DEFAULT_MIDDLEWARE, build_broker, build_middleware, get_settings
from django_actors.middleware import AgeLimit, Pipelines, Retries
from django_actors.middleware.django_db import DbConnections
from django_actors.middleware.signals import DjangoSignals


def test_the_defaults_include_database_hygiene_first_and_signals_after_the_skipping_middleware() -> None:
    assert DEFAULT_MIDDLEWARE[0] == "django_actors.middleware.django_db.DbConnections"
    assert DEFAULT_MIDDLEWARE[-1] == "django_actors.middleware.signals.DjangoSignals"
    # (The admin mirror, when enabled, goes before it: it only buffers in
    # worker threads and writes from its own thread.)
    setting = {"BROKER": {"BACKEND": "django_actors.brokers.stub.StubBroker"}, "MIRROR": {"ENABLED": False}}
    with override_settings(DJANGO_ACTORS=setting):
        kinds = [type(m) for m in build_middleware()]
    assert kinds[0] is DbConnections
    # AgeLimit and Pipelines may skip a message in before_process_message:
    # DjangoSignals must come after them so a skipped message is not "started".
    assert kinds.index(DjangoSignals) > max(kinds.index(AgeLimit), kinds.index(Pipelines), kinds.index(Retries))


def test_database_hygiene_runs_after_every_other_middleware_once_a_message_is_settled() -> None:
    setting = {
        "BROKER": {"BACKEND": "django_actors.brokers.stub.StubBroker"},
        "RESULTS": {"BACKEND": "django_actors.results.backends.stub.StubBackend"},
        "MIRROR": {"ENABLED": False},
    }
    with override_settings(DJANGO_ACTORS=setting):
        broker = build_broker()
    try:
        assert isinstance(broker, StubBroker)
        for hook in ("after_ack", "after_nack"):
            assert isinstance(broker._hooks[hook][-1].__self__, DbConnections), hook
        assert isinstance(broker._hooks["before_process_message"][0].__self__, DbConnections)
    finally:
        broker.close()


def test_a_project_may_leave_them_out() -> None:
    setting = {"BROKER": {"BACKEND": "django_actors.brokers.stub.StubBroker"}, "MIDDLEWARE": [], "RESULTS": None}
    with override_settings(DJANGO_ACTORS=setting):
        assert get_settings().middleware == ()
        assert build_middleware() == []
