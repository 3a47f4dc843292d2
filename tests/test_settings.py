"""Tests for django_actors.conf: the DJANGO_ACTORS setting and building the broker."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_actors import JSONEncoder, PickleEncoder, actor, get_broker, get_encoder
from django_actors import broker as broker_module
from django_actors import encoder as encoder_module
from django_actors.brokers.stub import StubBroker
from django_actors.conf import (
    DEFAULT_BROKER,
    DEFAULT_MIDDLEWARE,
    DEFAULT_RESULTS,
    build_broker,
    build_middleware,
    clear_settings_cache,
    get_settings,
    parse_settings,
)
from django_actors.middleware import AgeLimit, Retries, TimeLimit
from django_actors.results import Results
from django_actors.results.backends.stub import StubBackend

STUB_BROKER = "django_actors.brokers.stub.StubBroker"
STUB_BACKEND = "django_actors.results.backends.stub.StubBackend"
TIME_LIMIT = "django_actors.middleware.TimeLimit"


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    """No global broker, the settings cache cleared, the encoder restored."""
    monkeypatch.setattr(broker_module, "_broker", None)
    monkeypatch.setattr(encoder_module, "_encoder", encoder_module._encoder)
    clear_settings_cache()
    yield
    clear_settings_cache()


def stub(**extra):
    return {"BROKER": {"BACKEND": STUB_BROKER}, "RESULTS": {"BACKEND": STUB_BACKEND}, "MIDDLEWARE": [], **extra}


# parse_settings ------------------------------------------------------------------------------


def test_no_setting_means_the_embedded_database_defaults():
    config = parse_settings(None)
    assert config.broker.backend == DEFAULT_BROKER
    assert config.results is not None and config.results.backend == DEFAULT_RESULTS
    assert config.middleware == DEFAULT_MIDDLEWARE
    assert config.discover == ("actors",)
    assert config.discover_ignore == ()
    assert config.store_results is False
    assert config.result_ttl is None


def test_a_full_setting_is_parsed():
    config = parse_settings(
        {
            "BROKER": {"BACKEND": STUB_BROKER, "OPTIONS": {"max_message_size": 10}},
            "RESULTS": {"BACKEND": STUB_BACKEND, "OPTIONS": {"namespace": "n"}, "STORE_RESULTS": True,
                        "RESULT_TTL": 5000},
            "MIDDLEWARE": ["django_actors.middleware.AgeLimit", (TIME_LIMIT, {"interval": 5})],
            "DISCOVER": ["tasks"],
            "DISCOVER_IGNORE": ["auth"],
            "ENCODER": "django_actors.encoder.JSONEncoder",
            "MAX_MESSAGE_SIZE": 1024,
        }
    )  # fmt: skip
    assert config.broker.options == {"max_message_size": 10}
    assert config.results is not None and config.results.options == {"namespace": "n"}
    assert (config.store_results, config.result_ttl) == (True, 5000)
    assert config.middleware == ("django_actors.middleware.AgeLimit", (TIME_LIMIT, {"interval": 5}))
    assert (config.discover, config.discover_ignore) == (("tasks",), ("auth",))
    assert (config.encoder, config.max_message_size) == ("django_actors.encoder.JSONEncoder", 1024)


def test_results_none_disables_results():
    assert parse_settings({"RESULTS": None}).results is None


def test_the_setting_must_be_a_dict():
    with pytest.raises(ImproperlyConfigured, match="must be a dict, not list"):
        parse_settings([])


def test_unknown_top_level_keys_are_named():
    with pytest.raises(ImproperlyConfigured, match="unknown key\\(s\\): BROKR, RESULT") as info:
        parse_settings({"BROKR": {}, "RESULT": {}})
    assert "Allowed:" in str(info.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"BROKER": "redis"}, r"\['BROKER'\] must be a dict with a 'BACKEND' key"),
        ({"BROKER": {"BACKEND": STUB_BROKER, "OPTONS": {}}}, r"\['BROKER'\] has unknown key\(s\): OPTONS"),
        ({"BROKER": {"OPTIONS": {}}}, r"\['BROKER'\]\['BACKEND'\] must be a dotted path"),
        ({"BROKER": {"BACKEND": ""}}, r"\['BROKER'\]\['BACKEND'\] must be a dotted path"),
        ({"BROKER": {"BACKEND": STUB_BROKER, "OPTIONS": []}}, r"\['BROKER'\]\['OPTIONS'\] must be a dict"),
        ({"RESULTS": {"BACKEND": STUB_BACKEND, "TTL": 1}}, r"\['RESULTS'\] has unknown key\(s\): TTL"),
        ({"RESULTS": {"BACKEND": STUB_BACKEND, "STORE_RESULTS": "yes"}}, r"\['STORE_RESULTS'\] must be a bool"),
        ({"RESULTS": {"BACKEND": STUB_BACKEND, "RESULT_TTL": 0}}, r"\['RESULT_TTL'\] must be a positive int"),
        ({"RESULTS": {"BACKEND": STUB_BACKEND, "RESULT_TTL": "1s"}}, r"\['RESULT_TTL'\] must be a positive int"),
        ({"RESULTS": {"BACKEND": STUB_BACKEND, "RESULT_TTL": True}}, r"\['RESULT_TTL'\] must be a positive int"),
        ({"MIDDLEWARE": "django_actors.middleware.AgeLimit"}, r"\['MIDDLEWARE'\] must be a list"),
        ({"MIDDLEWARE": ["django_actors.middleware.AgeLimit", 3]}, r"\['MIDDLEWARE'\]\[1\] must be a dotted path"),
        ({"MIDDLEWARE": [("django_actors.middleware.AgeLimit",)]}, r"\['MIDDLEWARE'\]\[0\] must be a dotted path"),
        ({"DISCOVER": "actors"}, r"\['DISCOVER'\] must be a list of strings"),
        ({"DISCOVER_IGNORE": [1]}, r"\['DISCOVER_IGNORE'\] must be a list of strings"),
        ({"ENCODER": JSONEncoder}, r"\['ENCODER'\] must be a dotted path string"),
        ({"MAX_MESSAGE_SIZE": -1}, r"\['MAX_MESSAGE_SIZE'\] must be a positive int"),
        ({"MAX_MESSAGE_SIZE": True}, r"\['MAX_MESSAGE_SIZE'\] must be a positive int"),
    ],
)
def test_bad_values_raise_improperly_configured_naming_the_key(raw, expected):
    with pytest.raises(ImproperlyConfigured, match=expected):
        parse_settings(raw)


# build_broker ---------------------------------------------------------------------------------


def test_stub_broker_and_stub_backend_are_selectable():
    broker = build_broker(parse_settings(stub(MIDDLEWARE=["django_actors.middleware.Retries"])))
    assert type(broker) is StubBroker
    assert [type(m) for m in broker.middleware] == [Retries, Results]
    assert isinstance(broker.get_results_backend(), StubBackend)


def test_default_middleware_are_built_when_absent():
    raw = stub()
    del raw["MIDDLEWARE"]
    broker = build_broker(parse_settings(raw))
    kinds = {type(m).__name__ for m in broker.middleware}
    assert {"AgeLimit", "TimeLimit", "ShutdownNotifications", "Callbacks", "Pipelines", "Retries",
            "CurrentMessage", "Results"} <= kinds  # fmt: skip


def test_results_options_reach_the_middleware_and_backend():
    raw = stub(RESULTS={"BACKEND": STUB_BACKEND, "OPTIONS": {"namespace": "ns"}, "STORE_RESULTS": True,
                        "RESULT_TTL": 1234})  # fmt: skip
    broker = build_broker(parse_settings(raw))
    [results] = [m for m in broker.middleware if isinstance(m, Results)]
    assert (results.store_results, results.result_ttl) == (True, 1234)
    assert results.backend is not None and results.backend.namespace == "ns"


def test_results_listed_in_middleware_gets_the_configured_backend():
    raw = stub(MIDDLEWARE=["django_actors.results.Results", "django_actors.middleware.Retries"])
    broker = build_broker(parse_settings(raw))
    assert [type(m) for m in broker.middleware] == [Results, Retries]
    assert isinstance(broker.get_results_backend(), StubBackend)


def test_no_results_backend_when_results_is_none():
    broker = build_broker(parse_settings(stub(RESULTS=None)))
    assert not broker.has_results_backend()


def test_middleware_kwargs_are_passed():
    broker = build_broker(parse_settings(stub(MIDDLEWARE=[("django_actors.middleware.TimeLimit", {"interval": 7})])))
    [time_limit] = [m for m in broker.middleware if isinstance(m, TimeLimit)]
    assert time_limit.interval == 7


def test_broker_options_and_max_message_size_reach_the_broker():
    assert build_broker(parse_settings(stub(MAX_MESSAGE_SIZE=2048))).max_message_size == 2048
    raw = stub(BROKER={"BACKEND": STUB_BROKER, "OPTIONS": {"max_message_size": 99}}, MAX_MESSAGE_SIZE=2048)
    assert build_broker(parse_settings(raw)).max_message_size == 99


def test_encoder_setting_sets_the_global_encoder():
    build_broker(parse_settings(stub(ENCODER="django_actors.encoder.PickleEncoder")))
    assert isinstance(get_encoder(), PickleEncoder)


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (stub(BROKER={"BACKEND": "django_actors.brokers.nope.NopeBroker"}), "django_actors.brokers.nope.NopeBroker"),
        (stub(BROKER={"BACKEND": "django_actors.brokers.stub.Missing"}), "django_actors.brokers.stub.Missing"),
        (stub(BROKER={"BACKEND": "StubBroker"}), "'StubBroker'"),
        (stub(RESULTS={"BACKEND": "no.such.Backend"}), "RESULTS.*'no.such.Backend'"),
        (stub(MIDDLEWARE=["django_actors.middleware.NoSuch"]), "middleware 'django_actors.middleware.NoSuch'"),
        (stub(ENCODER="django_actors.encoder.YAMLEncoder"), "ENCODER.*YAMLEncoder"),
    ],
)
def test_bad_paths_raise_improperly_configured_naming_the_path(raw, named):
    with pytest.raises(ImproperlyConfigured, match=f"Cannot import .*{named}"):
        build_broker(parse_settings(raw))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (stub(BROKER={"BACKEND": "collections.OrderedDict"}), "'collections.OrderedDict' is not a Broker subclass"),
        (stub(RESULTS={"BACKEND": STUB_BROKER}), "is not a ResultBackend subclass"),
        (stub(MIDDLEWARE=["django_actors.brokers.stub.StubBroker"]), "is not a Middleware subclass"),
        (stub(MIDDLEWARE=["django_actors.conf.DEFAULT_MIDDLEWARE"]), "is not a Middleware subclass"),
        (stub(ENCODER="django_actors.message.Message"), "is not a Encoder subclass"),
    ],
)
def test_paths_to_the_wrong_kind_of_object_are_rejected(raw, expected):
    with pytest.raises(ImproperlyConfigured, match=expected):
        build_broker(parse_settings(raw))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (stub(BROKER={"BACKEND": STUB_BROKER, "OPTIONS": {"colour": "red"}}), "BROKER.*OPTIONS.*StubBroker.*colour"),
        (stub(RESULTS={"BACKEND": STUB_BACKEND, "OPTIONS": {"colour": "red"}}), "RESULTS.*StubBackend.*colour"),
        (stub(MIDDLEWARE=[("django_actors.middleware.AgeLimit", {"colour": "red"})]), "middleware .*AgeLimit.*colour"),
    ],
)
def test_bad_options_raise_improperly_configured(raw, expected):
    with pytest.raises(ImproperlyConfigured, match=expected):
        build_broker(parse_settings(raw))


def test_build_middleware_alone():
    middleware = build_middleware(parse_settings(stub(MIDDLEWARE=["django_actors.middleware.AgeLimit"], RESULTS=None)))
    assert [type(m) for m in middleware] == [AgeLimit]


# Settings from django.conf and override_settings --------------------------------------------------


def test_get_settings_reads_django_settings_once():
    with override_settings(DJANGO_ACTORS=stub(DISCOVER=["first"])):
        assert get_settings().discover == ("first",)
        assert get_settings() is get_settings()


def test_override_settings_rebuilds_the_broker():
    before = get_broker()
    assert before.has_results_backend()
    raw = stub(BROKER={"BACKEND": STUB_BROKER, "OPTIONS": {"max_message_size": 4321}}, RESULTS=None)
    with override_settings(DJANGO_ACTORS=raw):
        inside = get_broker()
        assert inside is not before
        assert inside.max_message_size == 4321
        assert not inside.has_results_backend()
    after = get_broker()
    assert after is not inside
    assert after.has_results_backend()
    assert after.max_message_size != 4321


def test_actors_are_declared_on_the_rebuilt_broker():
    @actor(queue_name="settings-queue")
    def settings_test_actor():
        pass

    with override_settings(DJANGO_ACTORS=stub()):
        broker = get_broker()
        assert broker.get_actor("settings_test_actor") is settings_test_actor
        settings_test_actor.send()
        assert len(broker.queues["settings-queue"].ready) == 1


def test_a_bad_override_fails_on_first_use_and_recovers_after():
    bad = {"BROKER": {"BACKEND": STUB_BROKER}, "TYPO": 1}
    with override_settings(DJANGO_ACTORS=bad), pytest.raises(ImproperlyConfigured, match="TYPO"):
        get_broker()
    assert isinstance(get_broker(), StubBroker)


def test_other_settings_do_not_rebuild_the_broker():
    broker = get_broker()
    with override_settings(DEBUG=True):
        assert get_broker() is broker
