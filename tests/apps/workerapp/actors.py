"""Actors for the runworkers tests.

Each actor appends an event (``"<what>:<tag>:<pid>"``) to the Redis list
:data:`EVENTS` on the server named by ``DJANGO_ACTORS_TEST_REDIS_URL``, so
a test can wait for what the worker processes did.
"""

from __future__ import annotations

import functools
import os
import time

import redis

import django_actors

from . import EVENTS


@functools.cache
def client() -> redis.Redis:
    return redis.Redis.from_url(os.environ["DJANGO_ACTORS_TEST_REDIS_URL"])


def event(what: str, tag: str) -> None:
    client().rpush(EVENTS, f"{what}:{tag}:{os.getpid()}")


@django_actors.actor(queue_name="alpha", max_retries=0)
def record(tag: str) -> None:
    event("done", tag)


@django_actors.actor(queue_name="beta", max_retries=0)
def record_beta(tag: str) -> None:
    event("done", tag)


@django_actors.actor(queue_name="alpha", max_retries=0)
def slow(tag: str, seconds: float) -> None:
    event("started", tag)
    time.sleep(seconds)
    event("done", tag)


@django_actors.actor(queue_name="alpha", max_retries=0)
def hang_first_time(tag: str) -> None:
    """Hangs on its first delivery (to be killed), finishes on the next."""
    attempt = client().incr(f"tests:attempts:{tag}")
    event(f"started{attempt}", tag)
    if attempt == 1:
        time.sleep(120)
    event("done", tag)
