"""System checks: every check id, and that checking builds no broker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.checks import CheckMessage, run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

import django_actors
from django_actors import broker as broker_module
from django_actors.actor import _registry, _registry_lock
from django_actors.checks import TAG, check_django_actors
from tests.apps.discoverapp.brokers import CountingBroker

REPO = Path(__file__).resolve().parent.parent
SETTINGS_OBJ = "settings.DJANGO_ACTORS"


@pytest.fixture(autouse=True)
def no_global_broker() -> Iterator[None]:
    """Checks run before any broker exists; keep it that way for the test."""
    previous = broker_module._broker
    broker_module._broker = None
    yield
    broker_module._broker = previous


@pytest.fixture
def temporary_actors() -> Iterator[list[django_actors.Actor[Any, Any]]]:
    """Actors created by the test, removed from the registry afterwards."""
    created: list[django_actors.Actor[Any, Any]] = []
    yield created
    with _registry_lock:
        for item in created:
            if _registry.get(item.actor_name) is item:
                del _registry[item.actor_name]


def settings_messages(setting: Any) -> list[CheckMessage]:
    with override_settings(DJANGO_ACTORS=setting):
        return [m for m in check_django_actors() if m.obj == SETTINGS_OBJ]


def ids(messages: list[CheckMessage]) -> list[str]:
    return [m.id for m in messages if m.id]


def test_the_suite_settings_and_the_defaults_pass() -> None:
    assert settings_messages({"BROKER": {"BACKEND": "django_actors.brokers.stub.StubBroker"}, "RESULTS": None}) == []
    assert settings_messages(None) == []  # the database broker and results


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        (["not", "a", "dict"], "must be a dict, not list"),
        ({"BROKERS": {}}, "unknown key(s): BROKERS"),
        ({"BROKER": "django_actors.brokers.stub.StubBroker"}, "must be a dict with a 'BACKEND' key"),
        ({"BROKER": {"BACKEND": ""}}, "must be a dotted path string"),
        ({"MIDDLEWARE": "django_actors.middleware.Retries"}, "'MIDDLEWARE'] must be a list"),
        ({"MIDDLEWARE": [42]}, "'MIDDLEWARE'][0] must be a dotted path or a (path, kwargs) pair"),
        ({"DISCOVER": "actors"}, "'DISCOVER'] must be a list of strings"),
        ({"RESULTS": {"BACKEND": "x.Y", "RESULT_TTL": -1}}, "RESULT_TTL'] must be a positive int"),
        ({"MAX_MESSAGE_SIZE": 0}, "MAX_MESSAGE_SIZE'] must be a positive int"),
    ],
)
def test_e001_a_malformed_setting_is_an_error_not_a_crash(setting: Any, fragment: str) -> None:
    (message,) = settings_messages(setting)
    assert message.id == "django_actors.E001"
    assert message.is_serious()
    assert fragment in message.msg
    assert "BROKER, RESULTS, MIDDLEWARE" in message.hint


def test_e002_paths_that_cannot_be_imported() -> None:
    messages = settings_messages(
        {
            "BROKER": {"BACKEND": "django_actors.brokers.nope.NopeBroker"},
            "RESULTS": {"BACKEND": "django_actors.results.backends.stub.NoSuchBackend"},
            "ENCODER": "no_such_package.Encoder",
            "MIDDLEWARE": ["django_actors.middleware.Retries", "django_actors.middleware.NoSuchMiddleware"],
        }
    )
    assert ids(messages) == ["django_actors.E002"] * 4
    text = "\n".join(m.msg for m in messages)
    assert "DJANGO_ACTORS['BROKER']['BACKEND'] 'django_actors.brokers.nope.NopeBroker' cannot be imported" in text
    assert "DJANGO_ACTORS['RESULTS']['BACKEND']" in text
    assert "DJANGO_ACTORS['ENCODER'] 'no_such_package.Encoder'" in text
    assert "DJANGO_ACTORS['MIDDLEWARE'][1] 'django_actors.middleware.NoSuchMiddleware'" in text
    assert all(m.hint and "dotted path" in m.hint for m in messages)


def test_e003_paths_that_name_the_wrong_kind_of_object() -> None:
    messages = settings_messages(
        {
            "BROKER": {"BACKEND": "django_actors.message.Message"},
            "RESULTS": {"BACKEND": "django_actors.brokers.stub.StubBroker"},
            "MIDDLEWARE": ["django_actors.broker.get_broker"],
        }
    )
    assert ids(messages) == ["django_actors.E003"] * 3
    assert "is not a subclass of django_actors.broker.Broker" in messages[0].msg
    assert "is not a subclass of django_actors.results.backend.ResultBackend" in messages[1].msg
    assert "is not a subclass of django_actors.middleware.middleware.Middleware" in messages[2].msg


def test_e004_options_that_do_not_fit_the_class() -> None:
    messages = settings_messages(
        {
            "BROKER": {"BACKEND": "django_actors.brokers.database.DatabaseBroker", "OPTIONS": {"usingg": "default"}},
            "RESULTS": None,
            "MIDDLEWARE": [("django_actors.middleware.Retries", {"max_retires": 3})],
        }
    )
    assert ids(messages) == ["django_actors.E004"] * 2
    broker_error, middleware_error = messages
    assert "['BROKER']['OPTIONS'] do not fit django_actors.brokers.database.DatabaseBroker" in broker_error.msg
    assert "usingg" in broker_error.msg
    assert "using" in broker_error.hint and "heartbeat_timeout" in broker_error.hint
    assert "max_retires" in middleware_error.msg


def test_e005_an_invalid_queue_name(temporary_actors: list[Any]) -> None:
    @django_actors.actor(actor_name="checks_bad_queue")
    def bad_queue() -> None: ...

    temporary_actors.append(bad_queue)
    bad_queue.queue_name = "no spaces allowed"
    messages = [m for m in check_django_actors() if m.id == "django_actors.E005"]
    assert len(messages) == 1
    assert "'checks_bad_queue' has an invalid queue name" in messages[0].msg
    assert messages[0].obj.endswith(".checks_bad_queue")


def test_e006_an_actor_option_no_configured_middleware_declares(temporary_actors: list[Any]) -> None:
    @django_actors.actor(actor_name="checks_retrying", max_retries=3, time_limit=1000)
    def retrying() -> None: ...

    temporary_actors.append(retrying)
    setting = {
        "BROKER": {"BACKEND": "django_actors.brokers.stub.StubBroker"},
        "RESULTS": None,
        "MIDDLEWARE": ["django_actors.middleware.TimeLimit"],
    }
    with override_settings(DJANGO_ACTORS=setting):
        messages = [m for m in check_django_actors() if m.obj and m.obj.endswith(".checks_retrying")]
    assert ids(messages) == ["django_actors.E006"]
    assert "uses the option 'max_retries', which no configured middleware declares" in messages[0].msg
    assert "Add django_actors.middleware.retries.Retries to DJANGO_ACTORS['MIDDLEWARE']" in messages[0].hint

    # With Retries configured, or results options with RESULTS configured, it passes.
    setting["MIDDLEWARE"] = ["django_actors.middleware.TimeLimit", "django_actors.middleware.Retries"]
    with override_settings(DJANGO_ACTORS=setting):
        assert not [m for m in check_django_actors() if m.obj and m.obj.endswith(".checks_retrying")]


def test_e006_results_options_need_a_results_backend(temporary_actors: list[Any]) -> None:
    @django_actors.actor(actor_name="checks_storing", store_results=True)
    def storing() -> None: ...

    temporary_actors.append(storing)

    def errors(results: Any) -> list[str]:
        setting = {"BROKER": {"BACKEND": "django_actors.brokers.stub.StubBroker"}, "RESULTS": results}
        with override_settings(DJANGO_ACTORS=setting):
            return ids([m for m in check_django_actors() if m.obj and m.obj.endswith(".checks_storing")])

    assert errors(None) == ["django_actors.E006"]
    assert errors({"BACKEND": "django_actors.results.backends.stub.StubBackend"}) == []


def test_w001_and_w002_discovery_settings() -> None:
    messages = settings_messages({"DISCOVER": ["actors", "tasks.py"], "DISCOVER_IGNORE": ["auth", "no_such_app"]})
    assert ids(messages) == ["django_actors.W001", "django_actors.W002"]
    assert not messages[0].is_serious()
    assert "'no_such_app', which is not an installed app" in messages[0].msg
    assert "'tasks.py' is not a module name" in messages[1].msg


def test_checks_build_no_broker() -> None:
    setting = {"BROKER": {"BACKEND": "tests.apps.discoverapp.brokers.CountingBroker"}, "RESULTS": None}
    before = CountingBroker.built
    with override_settings(DJANGO_ACTORS=setting):
        assert [m for m in run_checks(tags=[TAG]) if m.obj == SETTINGS_OBJ] == []
        assert CountingBroker.built == before
        assert broker_module._broker is None


def test_manage_py_check_reports_errors() -> None:
    with override_settings(DJANGO_ACTORS={"BROKER": {"BACKEND": "nowhere.Broker"}}), pytest.raises(
        SystemCheckError, match=r"django_actors.E002"
    ):
        call_command("check", "--tag", TAG)


def test_the_example_project_passes_manage_py_check() -> None:
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--fail-level", "WARNING"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout
