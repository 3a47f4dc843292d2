"""Small helpers that dramatiq users import from ``dramatiq.common``.

Queue names: a queue ``name`` has a delay queue ``name.DQ`` and a
dead-letter queue ``name.XQ``; :func:`q_name`, :func:`dq_name` and
:func:`xq_name` turn any of the three into the one asked for. The brokers
here keep delayed and dead-lettered messages in structures of their own, but
the names are what users and middleware (``message.queue_name``) match on.
"""

from __future__ import annotations

import random

from .message import current_millis, generate_unique_id

__all__ = ["compute_backoff", "current_millis", "dq_name", "generate_unique_id", "q_name", "xq_name"]

#: Suffix of a queue's delay queue.
DELAY_SUFFIX = ".DQ"
#: Suffix of a queue's dead-letter queue.
DEAD_LETTER_SUFFIX = ".XQ"


def q_name(queue_name: str) -> str:
    """Return the canonical name of a queue: ``"default.DQ"`` and
    ``"default.XQ"`` become ``"default"``; other names are returned as they are."""
    for suffix in (DELAY_SUFFIX, DEAD_LETTER_SUFFIX):
        if queue_name.endswith(suffix):
            return queue_name[: -len(suffix)]
    return queue_name


def dq_name(queue_name: str) -> str:
    """Return the name of a queue's delay queue (``"default"`` -> ``"default.DQ"``)."""
    return q_name(queue_name) + DELAY_SUFFIX


def xq_name(queue_name: str) -> str:
    """Return the name of a queue's dead-letter queue (``"default"`` -> ``"default.XQ"``)."""
    return q_name(queue_name) + DEAD_LETTER_SUFFIX


def compute_backoff(
    attempts: int, *, factor: int = 5, jitter: bool = True, max_backoff: int = 2000, max_exponent: int = 32
) -> tuple[int, int]:
    """An exponential backoff, with dramatiq's signature.

    Parameters:
      attempts: how many attempts were made so far.
      factor: the backoff of the first attempt, in milliseconds.
      jitter: draw the delay at random from the upper half of the value.
      max_backoff: the largest delay, in milliseconds.
      max_exponent: the exponent stops growing here.

    Returns:
      ``(attempts + 1, delay in milliseconds)``.
    """
    delay = min(factor * 2 ** min(attempts, max_exponent), max_backoff)
    if jitter:
        delay = int(random.uniform(delay / 2, delay))
    return attempts + 1, int(delay)
