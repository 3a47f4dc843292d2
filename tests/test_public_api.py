"""The public API keeps dramatiq's names: moving a project over is an import change."""

from __future__ import annotations

import importlib
import inspect

import pytest

import django_actors


def test_every_name_in_all_is_importable():
    for name in django_actors.__all__:
        assert getattr(django_actors, name) is not None, name


@pytest.mark.parametrize(
    "name",
    [
        "actor", "Actor", "GenericActor", "Message", "Broker", "Consumer", "MessageProxy", "Worker",
        "Middleware", "get_broker", "set_broker", "get_encoder", "set_encoder", "Encoder", "JSONEncoder",
        "PickleEncoder", "pipeline", "group", "Retry", "ActorNotFound", "BrokerError", "ConnectionError",
        "ConnectionClosed", "ConnectionFailed", "DecodeError", "DramatiqError", "QueueJoinTimeout",
        "QueueNotFound", "RateLimitExceeded", "MessageTooLarge",
    ],
)  # fmt: skip
def test_dramatiq_top_level_names_exist(name):
    assert name in django_actors.__all__
    assert hasattr(django_actors, name)


@pytest.mark.parametrize(
    ("module", "names"),
    [
        (
            "django_actors.middleware",
            ["AgeLimit", "Callbacks", "CurrentMessage", "Middleware", "MiddlewareError", "Pipelines", "Results",
             "Retries", "Shutdown", "ShutdownNotifications", "SkipMessage", "TimeLimit", "TimeLimitExceeded"],
        ),
        (
            "django_actors.results",
            ["Results", "ResultBackend", "ResultError", "ResultFailure", "ResultMissing", "ResultTimeout"],
        ),
        ("django_actors.results.backends", ["StubBackend"]),
        ("django_actors.brokers.stub", ["StubBroker"]),
        ("django_actors.middleware.retries", ["compute_backoff"]),
        ("django_actors.errors", ["DjangoActorsError", "Retry", "DecodeError"]),
    ],
)  # fmt: skip
def test_submodule_names_exist(module, names):
    imported = importlib.import_module(module)
    for name in names:
        assert getattr(imported, name) is not None, f"{module}.{name}"


def test_results_is_the_same_class_from_both_modules():
    from django_actors.middleware import Results as FromMiddleware
    from django_actors.results import Results as FromResults

    assert FromMiddleware is FromResults


def test_star_import_of_middleware_includes_results():
    namespace: dict[str, object] = {}
    exec("from django_actors.middleware import *", namespace)
    assert "Results" in namespace
    assert "TimeLimit" in namespace


def test_unknown_middleware_attribute_is_an_attribute_error():
    import django_actors.middleware as middleware

    with pytest.raises(AttributeError):
        middleware.NoSuchMiddleware  # noqa: B018


def test_dramatiq_dramatiqerror_is_the_base_error():
    assert django_actors.DramatiqError is django_actors.DjangoActorsError
    for name in ("ActorNotFound", "DecodeError", "QueueJoinTimeout", "Retry", "MessageTooLarge"):
        assert issubclass(getattr(django_actors, name), django_actors.DjangoActorsError)
    from django_actors.results import ResultFailure, ResultMissing, ResultTimeout

    for cls in (ResultFailure, ResultMissing, ResultTimeout):
        assert issubclass(cls, django_actors.DjangoActorsError)


@pytest.mark.parametrize(
    ("callable_path", "parameters"),
    [
        ("Actor.send_with_options", ["self", "args", "kwargs", "delay", "options"]),
        ("Actor.message_with_options", ["self", "args", "kwargs", "options"]),
        ("Message.get_result", ["self", "backend", "block", "timeout"]),
        ("Worker.__init__", ["self", "broker", "queues", "worker_timeout", "worker_threads", "prefetch"]),
        ("Broker.enqueue", ["self", "message", "delay"]),
        ("Broker.join", ["self", "queue_name", "timeout"]),
    ],
)
def test_signatures_match_dramatiq(callable_path, parameters):
    owner, attribute = callable_path.split(".")
    function = getattr(getattr(django_actors, owner), attribute)
    assert list(inspect.signature(function).parameters) == parameters


def test_actor_decorator_keywords_match_dramatiq():
    parameters = inspect.signature(django_actors.actor).parameters
    for name in ("fn", "actor_class", "actor_name", "queue_name", "priority", "broker"):
        assert name in parameters
    assert parameters["queue_name"].default == "default"
    assert parameters["priority"].default == 0


def test_package_is_typed():
    from importlib.resources import files

    assert files("django_actors").joinpath("py.typed").is_file()


def test_django_middleware_are_importable_from_the_middleware_package() -> None:
    from django_actors import middleware
    from django_actors.middleware.django_db import DbConnections
    from django_actors.middleware.mirror import Mirror
    from django_actors.middleware.signals import DjangoSignals

    assert middleware.DbConnections is DbConnections
    assert middleware.DjangoSignals is DjangoSignals
    assert middleware.Mirror is Mirror
    with pytest.raises(AttributeError, match="Nope"):
        middleware.Nope  # noqa: B018
