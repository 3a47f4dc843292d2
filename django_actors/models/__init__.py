"""The app's models: the database broker's queue, the database results
backend's records, and (later) the admin mirror.

One module per concern; everything is re-exported here so that Django finds
the models and users can write ``from django_actors.models import QueuedMessage``.
"""

from __future__ import annotations

from .mirror import Composition, Dashboard, MessageRecord, WorkerRecord
from .queue import MessageState, QueuedMessage, WorkerHeartbeat
from .results import ResultSet, ResultSetMember, StoredResult

__all__ = [
    "Composition",
    "Dashboard",
    "MessageRecord",
    "MessageState",
    "QueuedMessage",
    "ResultSet",
    "ResultSetMember",
    "StoredResult",
    "WorkerHeartbeat",
    "WorkerRecord",
]
