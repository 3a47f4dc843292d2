"""Autodiscovery of actors modules, and the broker being built lazily.

Failing imports are tested in a fresh interpreter (``python -c``), as
``django.setup()`` runs them: an app registry that failed to populate cannot
be reused in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.test import override_settings

from django_actors.discovery import _module_exists, autodiscover

REPO = Path(__file__).resolve().parent.parent
BASE_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django_actors"]


def run_django(
    script: str, *, installed: list[str], setting: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a new interpreter after ``settings.configure(...)``."""
    prelude = (
        "from django.conf import settings\n"
        f"settings.configure(INSTALLED_APPS={BASE_APPS + installed!r}, DATABASES={{}}, "
        f"DJANGO_ACTORS={setting!r})\n"
        "import django, json\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    return subprocess.run(
        [sys.executable, "-c", prelude + script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def test_an_error_in_an_actors_module_surfaces_with_its_traceback() -> None:
    result = run_django("django.setup()\n", installed=["tests.apps.brokenapp"])
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert 'tests/apps/brokenapp/actors.py", line 1' in result.stderr
    assert "RuntimeError: brokenapp.actors is broken on purpose" in result.stderr
    assert "raised while django_actors imported 'tests.apps.brokenapp.actors'" in result.stderr


def test_a_missing_actors_module_is_fine_but_a_missing_import_inside_one_raises() -> None:
    fine = run_django(
        "django.setup()\nfrom django.apps import apps\n"
        "print(json.dumps(apps.get_app_config('django_actors').discovered_modules))\n",
        installed=["tests.apps.noactors", "tests.apps.discoverapp"],
    )
    assert fine.returncode == 0, fine.stderr
    assert json.loads(fine.stdout) == ["tests.apps.discoverapp.actors"]

    broken = run_django("django.setup()\n", installed=["tests.apps.noactors", "tests.apps.missingdep"])
    assert broken.returncode != 0
    assert "ModuleNotFoundError: No module named 'django_actors_test_no_such_module'" in broken.stderr
    assert 'tests/apps/missingdep/actors.py", line 1' in broken.stderr


def test_a_failing_parent_package_of_a_dotted_discover_module_raises() -> None:
    # DISCOVER = ["tasks.actors"]: "tasks" missing in an app is fine; a "tasks"
    # package that fails to import is an error, not "no module".
    fine = run_django(
        "django.setup()\nfrom django.apps import apps\n"
        "print(json.dumps(apps.get_app_config('django_actors').discovered_modules))\n",
        installed=["tests.apps.discoverapp"],
        setting={"DISCOVER": ["tasks.actors"]},
    )
    assert fine.returncode == 0, fine.stderr
    assert json.loads(fine.stdout) == []

    broken = run_django(
        "django.setup()\n", installed=["tests.apps.brokenparent"], setting={"DISCOVER": ["tasks.actors"]}
    )
    assert broken.returncode != 0
    assert "No module named 'django_actors_test_no_such_parent_dependency'" in broken.stderr


def test_discover_ignore_skips_an_app_by_label_or_name() -> None:
    for ignored in ("brokenapp", "tests.apps.brokenapp"):
        result = run_django(
            "django.setup()\nprint('ok')\n", installed=["tests.apps.brokenapp"], setting={"DISCOVER_IGNORE": [ignored]}
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "ok"


def test_the_broker_is_built_lazily_never_on_import() -> None:
    script = """
import django_actors
import django_actors.broker as broker_module
from tests.apps.discoverapp.brokers import CountingBroker
report = {"after_import": [CountingBroker.built, broker_module._broker is None]}
django.setup()
import tests.apps.discoverapp.actors as actors
report["after_setup"] = [CountingBroker.built, broker_module._broker is None]
broker = django_actors.get_broker()
report["after_get_broker"] = [CountingBroker.built, type(broker).__name__, "discovered_actor" in broker.actors]
django_actors.get_broker()
actors.discovered_actor.send(1)
report["after_send"] = [CountingBroker.built, len(broker.queues["discovered"])]
print(json.dumps(report))
"""
    result = run_django(
        script,
        installed=["tests.apps.discoverapp"],
        setting={"BROKER": {"BACKEND": "tests.apps.discoverapp.brokers.CountingBroker"}, "RESULTS": None},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "after_import": [0, True],
        "after_setup": [0, True],
        "after_get_broker": [1, "CountingBroker", True],
        "after_send": [1, 1],
    }


def test_a_malformed_setting_does_not_stop_setup() -> None:
    # The system check reports it (django_actors.E001); setup still works.
    result = run_django(
        "django.setup()\nfrom django.apps import apps\n"
        "print(json.dumps(apps.get_app_config('django_actors').discovered_modules))\n",
        installed=["tests.apps.discoverapp"],
        setting={"DISCOVER": "actors", "BROKER": 42},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["tests.apps.discoverapp.actors"]
    assert "DJANGO_ACTORS is malformed" in result.stderr


# In this process -------------------------------------------------------------------------


def test_module_exists() -> None:
    assert _module_exists("tests.apps.plainapp.jobs")
    assert not _module_exists("tests.apps.noactors.actors")
    assert not _module_exists("tests.apps.noactors.tasks.actors")
    with pytest.raises(ModuleNotFoundError, match="django_actors_test_no_such_parent_dependency"):
        _module_exists("tests.apps.brokenparent.tasks.actors")


def test_autodiscover_imports_the_named_modules_of_installed_apps() -> None:
    # Apps without actors, so nothing is registered in this process.
    with override_settings(INSTALLED_APPS=[*BASE_APPS, "tests.apps.noactors", "tests.apps.plainapp"]):
        assert apps.get_app_config("django_actors").discovered_modules == []
        assert autodiscover(["jobs", "actors"]) == ["tests.apps.plainapp.jobs"]
        assert "tests.apps.plainapp.jobs" in sys.modules
        assert autodiscover(["jobs"], ignore=["plainapp"]) == []
        assert autodiscover(["jobs"], ignore=["tests.apps.plainapp"]) == []
