"""There is no RabbitMQ broker: this module only says so clearly.

``from django_actors.brokers.rabbitmq import RabbitmqBroker`` (an import
carried over from dramatiq) works, so modules that merely mention it still
import; building one raises :class:`NotImplementedError` naming the brokers
that exist. Redis is the production broker (with Sentinel for failover), the
database broker the embedded default.
"""

from __future__ import annotations

from typing import Any, NoReturn

__all__ = ["RabbitmqBroker"]


class RabbitmqBroker:
    """Not available: raises on construction.

    Raises:
      NotImplementedError: always, naming the brokers to use instead.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError(
            "django_actors has no RabbitMQ broker. Use "
            "django_actors.brokers.redis.RedisBroker (production) or "
            "django_actors.brokers.database.DatabaseBroker (the embedded default), "
            "set in DJANGO_ACTORS['BROKER']."
        )
