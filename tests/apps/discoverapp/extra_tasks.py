"""Discovered only when ``DISCOVER`` names ``extra_tasks``."""

from __future__ import annotations

import django_actors


@django_actors.actor(queue_name="discovered")
def extra_task() -> None:
    pass
