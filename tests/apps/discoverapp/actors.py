"""Discovered by default (``DISCOVER = ["actors"]``)."""

from __future__ import annotations

import django_actors


@django_actors.actor(queue_name="discovered")
def discovered_actor(value: int) -> int:
    return value
