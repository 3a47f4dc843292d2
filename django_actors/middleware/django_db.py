"""DbConnections: Django database hygiene around every message."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import close_old_connections, connections, reset_queries

from .middleware import Middleware

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy


class DbConnections(Middleware):
    """Give each message the database connection lifecycle of a request.

    Before each message and once it is settled (acked or dead-lettered),
    connections that are broken or older than their ``CONN_MAX_AGE`` are
    closed (``close_old_connections``); the query log is cleared before each
    message (``reset_queries``, so ``DEBUG = True`` does not grow memory
    without bound). A worker thread closes its connections when
    it stops, so no connection outlives its thread.

    Put it first in the middleware list: its ``after_*`` hooks then run
    last, after every middleware that may still use the database.
    """

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        reset_queries()
        close_old_connections()

    def after_ack(self, broker: Broker, message: MessageProxy) -> None:
        close_old_connections()

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        close_old_connections()

    def before_worker_thread_shutdown(self, broker: Broker, thread: Any) -> None:
        connections.close_all()

    def before_consumer_thread_shutdown(self, broker: Broker, thread: Any) -> None:
        connections.close_all()
