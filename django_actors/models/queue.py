"""Tables of the database broker: queued messages and worker heartbeats.

Times are epoch milliseconds (``BigIntegerField``), like message timestamps
and ``eta`` options, so that comparisons are plain integer comparisons on
every database. The ``*_datetime`` properties give aware datetimes.
"""

from __future__ import annotations

import datetime

from django.db import models


def _as_datetime(millis: int | None) -> datetime.datetime | None:
    if millis is None:
        return None
    return datetime.datetime.fromtimestamp(millis / 1000, tz=datetime.UTC)


class MessageState(models.TextChoices):
    """Where a message is in its life."""

    QUEUED = "queued", "queued"  # waiting; runnable once ``eta`` has passed
    CLAIMED = "claimed", "claimed"  # fetched by a worker, not yet acked
    DONE = "done", "done"  # acked; kept only when the broker has a retention
    DEAD = "dead", "dead"  # dead-lettered


class QueuedMessage(models.Model):
    """One message of the database broker.

    A row leaves the table only when its message was acked (or, with a
    retention, some time after) or when a dead letter expires.
    """

    id = models.BigAutoField(primary_key=True)
    queue_name = models.CharField(max_length=128)
    actor_name = models.CharField(max_length=255, blank=True)
    message_id = models.CharField(max_length=255, db_index=True)
    #: The actor's priority: lower runs first.
    priority = models.IntegerField(default=0)
    #: When the message may run (epoch ms); the enqueue time unless delayed.
    eta = models.BigIntegerField()
    state = models.CharField(max_length=8, choices=MessageState.choices, default=MessageState.QUEUED)
    #: The encoded message.
    payload = models.BinaryField()
    enqueued_at = models.BigIntegerField()
    #: When the row entered its current state (epoch ms).
    updated_at = models.BigIntegerField()
    #: The worker id (see :class:`WorkerHeartbeat`) holding the claim.
    claimed_by = models.CharField(max_length=255, null=True, blank=True)
    #: Unique per fetch, to tell which rows one fetch claimed.
    claim_token = models.CharField(max_length=32, null=True, blank=True)
    #: How many times the message was claimed.
    deliveries = models.IntegerField(default=0)
    #: Why the message was dead-lettered.
    reason = models.TextField(blank=True, default="")

    class Meta:
        db_table = "django_actors_message"
        verbose_name = "queued message"
        indexes = [
            # Fetch: the next runnable messages of a queue, in order.
            models.Index(fields=["queue_name", "state", "priority", "eta", "id"], name="django_actors_msg_fetch"),
            # Reaper and retention: claimed/done/dead rows by age.
            models.Index(fields=["state", "updated_at"], name="django_actors_msg_state"),
        ]

    def __str__(self) -> str:
        return f"{self.actor_name or '?'} {self.message_id} ({self.state})"

    @property
    def eta_datetime(self) -> datetime.datetime | None:
        """:attr:`eta` as an aware datetime."""
        return _as_datetime(self.eta)

    @property
    def enqueued_datetime(self) -> datetime.datetime | None:
        """:attr:`enqueued_at` as an aware datetime."""
        return _as_datetime(self.enqueued_at)

    @property
    def updated_datetime(self) -> datetime.datetime | None:
        """:attr:`updated_at` as an aware datetime."""
        return _as_datetime(self.updated_at)


class WorkerHeartbeat(models.Model):
    """A consuming process, alive while :attr:`last_seen` is recent.

    Claims of a worker whose heartbeat is older than the broker's
    ``heartbeat_timeout`` are released by the reaper.
    """

    worker_id = models.CharField(max_length=255, primary_key=True)
    hostname = models.CharField(max_length=255, blank=True)
    pid = models.IntegerField(null=True)
    started_at = models.BigIntegerField()
    last_seen = models.BigIntegerField(db_index=True)

    class Meta:
        db_table = "django_actors_worker"
        verbose_name = "worker heartbeat"

    def __str__(self) -> str:
        return self.worker_id

    @property
    def last_seen_datetime(self) -> datetime.datetime | None:
        """:attr:`last_seen` as an aware datetime."""
        return _as_datetime(self.last_seen)
