"""A stub broker that counts how many times it was built."""

from __future__ import annotations

from typing import Any

from django_actors.brokers.stub import StubBroker


class CountingBroker(StubBroker):
    built = 0

    def __init__(self, middleware: Any = None, **kwargs: Any) -> None:
        type(self).built += 1
        super().__init__(middleware, **kwargs)
