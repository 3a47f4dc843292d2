"""Django settings for the django_actors test suite."""

from __future__ import annotations

import os
import tempfile

# Worker threads in the tests need their own connections to the same database,
# so the database is a file, never ":memory:". One file per test process.
_DB_DIR = os.environ.get("DJANGO_ACTORS_TEST_DB_DIR", tempfile.gettempdir())
_DB_NAME = os.path.join(_DB_DIR, f"django_actors_{os.getpid()}.sqlite3")

SECRET_KEY = "django-actors-tests-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_actors",
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

ROOT_URLCONF = "tests.urls"

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

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": _DB_NAME,
        # A named test database makes Django create a file, not an in-memory db.
        "TEST": {"NAME": os.path.join(_DB_DIR, f"test_django_actors_{os.getpid()}.sqlite3")},
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
STATIC_URL = "/static/"

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

DJANGO_ACTORS = {
    "BROKER": {"BACKEND": "django_actors.brokers.stub.StubBroker"},
    "RESULTS": {"BACKEND": "django_actors.results.backends.stub.StubBackend"},
    # The admin mirror writes to the database from a background thread; only its own tests turn it on.
    "MIRROR": {"ENABLED": False},
}
