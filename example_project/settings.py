"""Settings of the example project.

There is no ``DJANGO_ACTORS`` setting: the project runs on the embedded
default, the database broker and database results on its own SQLite
database. Run it with::

    python manage.py migrate
    python manage.py runworkers --processes 2 --threads 4
    python manage.py runserver
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import django

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = "django-actors-example-not-secret"  # noqa: S105 - an example project
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_actors",
    "example_project.shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.debug",
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Workers and the web process share the file: wait up to 20 s for a lock
# instead of failing at once; and (Django 5.1+) take the write lock when a
# transaction starts, or a transaction that reads and then writes can fail at
# once with "database is locked" when another process wrote meanwhile.
SQLITE_OPTIONS: dict[str, Any] = {"timeout": 20}
if django.VERSION >= (5, 1):
    SQLITE_OPTIONS["transaction_mode"] = "IMMEDIATE"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        # DJANGO_ACTORS_EXAMPLE_DB puts the database elsewhere (the tests do).
        "NAME": os.environ.get("DJANGO_ACTORS_EXAMPLE_DB") or BASE_DIR / "db.sqlite3",
        "OPTIONS": SQLITE_OPTIONS,
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
STATIC_URL = "/static/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_actors": {"handlers": ["console"], "level": "INFO"},
        "example_project": {"handlers": ["console"], "level": "INFO"},
    },
}
