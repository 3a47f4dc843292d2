"""The pytest plugin, exercised as a user would: a small project run by
pytest in a subprocess (``pytester``), finding the plugin through its entry
point, with pytest-django."""

from __future__ import annotations

import textwrap

import pytest

from django_actors.brokers.stub import StubBroker

pytest_plugins = ["pytester"]

SETTINGS = """
import os
SECRET_KEY = "x"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django_actors", "shop"]
DATABASES = {"default": {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": os.path.join(os.path.dirname(__file__), "db.sqlite3"),
    "TEST": {"NAME": os.path.join(os.path.dirname(__file__), "test_db.sqlite3")},
}}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DJANGO_ACTORS = {
    "MIDDLEWARE": [
        "django_actors.middleware.django_db.DbConnections",
        "django_actors.middleware.Callbacks",
        "django_actors.middleware.Pipelines",
        "django_actors.middleware.Retries",
        "django_actors.middleware.CurrentMessage",
        "django_actors.middleware.signals.DjangoSignals",
        "shop.middleware.Stamp",
    ],
    # The plugin swaps in an in-memory results backend: this one is never built.
    "RESULTS": {"BACKEND": "shop.no_such_module.Backend", "STORE_RESULTS": True},
}
"""

MIDDLEWARE = """
from django_actors.middleware import Middleware

class Stamp(Middleware):
    actor_options = {"stamp"}
"""

MODELS = """
from django.db import models

class Note(models.Model):
    text = models.CharField(max_length=100)
"""

ACTORS = """
import django_actors
from django_actors import group, pipeline
from .models import Note

calls = {"flaky": 0}

@django_actors.actor(queue_name="first")
def add(x, y):
    return x + y

@django_actors.actor(queue_name="second", stamp=True)
def double(x):
    return x * 2

@django_actors.actor(queue_name="third")
def collect(values):
    Note.objects.create(text=",".join(map(str, values)))

@django_actors.actor(queue_name="first", max_retries=3, min_backoff=10, max_backoff=20)
def flaky(tag):
    calls["flaky"] += 1
    if calls["flaky"] < 3:
        raise ValueError("not yet")
    Note.objects.create(text=tag)

@django_actors.actor(max_retries=0)
def broken():
    raise KeyError("broken on purpose")

@django_actors.actor
def later():
    pass
"""

TESTS = """
import pytest
from django.dispatch import receiver

from django_actors import group, pipeline
from django_actors.brokers.stub import StubBroker
from django_actors.errors import QueueJoinTimeout
from django_actors.middleware.signals import DjangoSignals
from django_actors.results.backends.stub import StubBackend
from django_actors.signals import message_succeeded
from django_actors.testing import run_until_complete
from shop.actors import add, broken, calls, collect, double, flaky, later
from shop.middleware import Stamp
from shop.models import Note


def test_stub_broker_has_the_project_middleware_and_stub_results(stub_broker):
    assert isinstance(stub_broker, StubBroker)
    kinds = {type(m) for m in stub_broker.middleware}
    assert Stamp in kinds and DjangoSignals in kinds
    assert isinstance(stub_broker.get_results_backend(), StubBackend)


def test_stub_worker_runs_messages(stub_broker, stub_worker):
    message = add.send(2, 3)
    stub_broker.join("first")
    stub_worker.join()
    assert message.get_result(block=True, timeout=5000) == 5


@pytest.mark.django_db(transaction=True)
def test_run_until_complete_follows_a_chord_across_queues(stub_broker):
    # Each step goes to a queue nothing has used yet: the helper must follow.
    run = (add.message(1, 2) | group([double.message(), double.message()]) | collect.message()).run()
    assert "third" in stub_broker.get_declared_queues()
    run_until_complete()
    assert list(Note.objects.values_list("text", flat=True)) == ["6,6"]
    assert run.get_results() == [3, [6, 6], None]


@pytest.mark.django_db(transaction=True)
def test_run_until_complete_waits_for_delayed_retries(stub_broker):
    calls["flaky"] = 0
    flaky.send("third time lucky")
    run_until_complete(fail_fast=True)
    assert calls["flaky"] == 3
    assert Note.objects.get().text == "third time lucky"


def test_fail_fast_raises_what_the_actor_raised(stub_broker):
    broken.send()
    with pytest.raises(KeyError, match="broken on purpose"):
        run_until_complete(fail_fast=True)


def test_without_fail_fast_the_failure_is_dead_lettered(stub_broker):
    broken.send()
    run_until_complete()
    assert [proxy.actor_name for proxy in stub_broker.dead_letters] == ["broken"]


def test_run_until_complete_raises_on_timeout(stub_broker):
    later.send_with_options(delay=60_000)
    with pytest.raises(QueueJoinTimeout, match="messages were left after 200 ms"):
        run_until_complete(timeout=200)


def test_signals_are_sent(stub_broker):
    seen = []

    @receiver(message_succeeded, sender=add)
    def on_success(sender, message, result, **kwargs):
        seen.append(result)

    try:
        add.send(20, 22)
        run_until_complete()
    finally:
        message_succeeded.disconnect(on_success, sender=add)
    assert seen == [42]


def test_the_global_broker_is_restored(stub_broker):
    import django_actors.broker as broker_module
    assert broker_module.get_broker() is stub_broker
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    # The user's project has its own settings (this suite's are in the environment).
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    pytester.makeini(
        """
        [pytest]
        DJANGO_SETTINGS_MODULE = project_settings
        """
    )
    pytester.makepyfile(project_settings=SETTINGS)
    shop = pytester.mkpydir("shop")
    (shop / "middleware.py").write_text(textwrap.dedent(MIDDLEWARE))
    (shop / "models.py").write_text(textwrap.dedent(MODELS))
    (shop / "actors.py").write_text(textwrap.dedent(ACTORS))
    migrations = shop / "migrations"
    migrations.mkdir()
    (migrations / "__init__.py").write_text("")
    (migrations / "0001_initial.py").write_text(
        textwrap.dedent(
            """
            from django.db import migrations, models

            class Migration(migrations.Migration):
                initial = True
                dependencies = []
                operations = [
                    migrations.CreateModel(
                        name="Note",
                        fields=[
                            ("id", models.BigAutoField(primary_key=True, serialize=False)),
                            ("text", models.CharField(max_length=100)),
                        ],
                    ),
                ]
            """
        )
    )
    return pytester


TEARDOWN_TESTS = """
import django_actors.broker as broker_module
from shop.actors import add


def test_plugin_registered_through_its_entry_point(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("django_actors")


def test_leaves_messages(stub_broker):
    add.send(1, 1)
    test_leaves_messages.broker = stub_broker


def test_next_test_gets_a_fresh_broker(stub_broker):
    previous = test_leaves_messages.broker
    assert stub_broker is not previous
    assert len(previous.queues["first"]) == 0


def test_no_broker_is_left_installed():
    assert broker_module._broker is None
"""


def test_plugin_fixtures_and_run_until_complete(project: pytest.Pytester) -> None:
    # One pytest run (a subprocess, so the project has its own settings).
    project.makepyfile(test_user=TESTS, test_zz_teardown=TEARDOWN_TESTS)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", "-v")
    result.assert_outcomes(passed=13)


def test_stub_broker_with_this_suites_default_settings(stub_broker: StubBroker) -> None:
    # Default middleware, the admin mirror left out, in-memory results.
    from django_actors.middleware.django_db import DbConnections
    from django_actors.middleware.mirror import Mirror
    from django_actors.middleware.signals import DjangoSignals
    from django_actors.results.backends.stub import StubBackend

    kinds = [type(m) for m in stub_broker.middleware]
    assert kinds[0] is DbConnections and DjangoSignals in kinds
    assert Mirror not in kinds
    assert isinstance(stub_broker.get_results_backend(), StubBackend)
