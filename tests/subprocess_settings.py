"""Settings for Django processes started by the tests (``runworkers`` and friends).

Environment:
  DJANGO_ACTORS_TEST_REDIS_URL: the Redis server of the broker (required).
  DJANGO_ACTORS_TEST_EXTRA_APPS: comma-separated apps to install as well.
  DJANGO_ACTORS_TEST_BROKER_OPTIONS: JSON merged into the broker's OPTIONS.
"""

from __future__ import annotations

import json
import os

from django_actors.conf import DEFAULT_MIDDLEWARE
from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS as _BASE_APPS

INSTALLED_APPS = [
    *_BASE_APPS,
    "tests.apps.workerapp",
    *[app for app in os.environ.get("DJANGO_ACTORS_TEST_EXTRA_APPS", "").split(",") if app],
]

DJANGO_ACTORS = {
    "BROKER": {
        "BACKEND": "django_actors.brokers.redis.RedisBroker",
        "OPTIONS": {
            "url": os.environ["DJANGO_ACTORS_TEST_REDIS_URL"],
            # Redeliver a killed worker's messages quickly.
            "heartbeat_timeout": 1000,
            **json.loads(os.environ.get("DJANGO_ACTORS_TEST_BROKER_OPTIONS", "{}")),
        },
    },
    "RESULTS": None,
    "MIDDLEWARE": [*DEFAULT_MIDDLEWARE, "tests.apps.workerapp.middleware.Lifecycle"],
}
