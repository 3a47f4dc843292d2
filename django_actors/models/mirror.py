"""The admin mirror: compositions, messages and workers as database rows.

The :class:`~django_actors.middleware.mirror.Mirror` middleware records what
happens to messages; :mod:`django_actors.mirror` writes it here in batches.
These tables are a read model for the admin: the broker and the results
backend stay the source of truth, and old rows are pruned by age.
"""

from __future__ import annotations

import datetime

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

#: How long a worker may go without a heartbeat before it is shown as lost (seconds).
WORKER_LOST_AFTER = 30


class MessageStatus(models.TextChoices):
    """What happened to a message last."""

    ENQUEUED = "enqueued", _("enqueued")
    DELAYED = "delayed", _("delayed")
    STARTED = "started", _("started")
    RETRYING = "retrying", _("retrying")
    SKIPPED = "skipped", _("skipped")
    SUCCEEDED = "succeeded", _("succeeded")
    FAILED = "failed", _("failed")


#: Message states after which nothing more happens to a message (unless retried from the admin).
FINAL_MESSAGE_STATES = frozenset({MessageStatus.SKIPPED, MessageStatus.SUCCEEDED, MessageStatus.FAILED})


class CompositionKind(models.TextChoices):
    """Pipeline or group."""

    PIPELINE = "pipeline", _("pipeline")
    GROUP = "group", _("group")


class CompositionStatus(models.TextChoices):
    """Where a composition stands."""

    PENDING = "pending", _("pending")
    RUNNING = "running", _("running")
    FAILED = "failed", _("failed")
    CANCELLED = "cancelled", _("cancelled")
    SUCCEEDED = "succeeded", _("succeeded")


#: Composition states are ordered too; a refresh never moves one backwards.
#: (Retrying from the admin reopens a failed composition explicitly.)
COMPOSITION_RANK: dict[str, int] = {
    CompositionStatus.PENDING: 0,
    CompositionStatus.RUNNING: 1,
    CompositionStatus.FAILED: 2,
    CompositionStatus.CANCELLED: 3,
    CompositionStatus.SUCCEEDED: 3,
}
FINAL_COMPOSITION_STATES = frozenset(
    {CompositionStatus.FAILED, CompositionStatus.CANCELLED, CompositionStatus.SUCCEEDED}
)


class CompositionQuerySet(models.QuerySet["Composition"]):
    """Queries on mirrored compositions."""

    def roots(self) -> CompositionQuerySet:
        """Only top-level compositions (not nested in another)."""
        return self.filter(parent_id__isnull=True)

    def live(self) -> CompositionQuerySet:
        """Compositions that have not finished."""
        return self.exclude(status__in=FINAL_COMPOSITION_STATES)

    def tree(self, root_id: str) -> CompositionQuerySet:
        """Every composition of the tree rooted at ``root_id``."""
        return self.filter(root_id=root_id)

    def older_than(self, cutoff: datetime.datetime) -> CompositionQuerySet:
        """Compositions last updated before ``cutoff``."""
        return self.filter(updated__lt=cutoff)


class Composition(models.Model):
    """A pipeline or a group, with its progress read from the results backend's counters."""

    id = models.CharField(_("id"), max_length=64, primary_key=True)
    kind = models.CharField(_("kind"), max_length=16, choices=CompositionKind.choices)
    name = models.CharField(_("name"), max_length=255, blank=True)
    parent = models.ForeignKey(
        "self",
        verbose_name=_("parent"),
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="children",
    )
    #: The id of the outermost composition of the tree (itself when top-level).
    root_id = models.CharField(_("root"), max_length=64, db_index=True)
    #: The position in the parent (a pipeline step or a group member).
    position = models.IntegerField(_("position"), null=True, blank=True)
    total = models.IntegerField(_("total"), default=0)
    completed = models.IntegerField(_("completed"), default=0)
    failed = models.IntegerField(_("failed"), default=0)
    cancelled = models.IntegerField(_("cancelled"), default=0, help_text=_("Members skipped because of a cancel."))
    status = models.CharField(
        _("status"), max_length=16, choices=CompositionStatus.choices, default=CompositionStatus.PENDING
    )
    status_rank = models.SmallIntegerField(default=0, editable=False)
    created = models.DateTimeField(_("created"), default=timezone.now, db_index=True)
    started = models.DateTimeField(_("started"), null=True, blank=True)
    finished = models.DateTimeField(_("finished"), null=True, blank=True)
    updated = models.DateTimeField(_("updated"), default=timezone.now, db_index=True)

    objects = CompositionQuerySet.as_manager()

    class Meta:
        app_label = "django_actors"
        db_table = "django_actors_mirror_composition"
        verbose_name = _("composition")
        verbose_name_plural = _("compositions")
        ordering = ("-created",)
        indexes = [models.Index(fields=["status", "created"], name="da_comp_status_created")]

    def __str__(self) -> str:
        return f"{self.kind} {self.name or self.id}"

    @property
    def percent(self) -> int:
        """How much is done, 0 to 100."""
        if self.total <= 0:
            return 100 if self.status == CompositionStatus.SUCCEEDED else 0
        return min(100, int(self.completed * 100 / self.total))

    @property
    def failed_percent(self) -> int:
        """The share of failed and skipped members, 0 to 100 (the red part of the bar)."""
        if self.total <= 0:
            return 0
        return min(100 - self.percent, int((self.failed + self.cancelled) * 100 / self.total))

    @property
    def is_final(self) -> bool:
        """Whether the composition has finished (succeeded, failed or cancelled)."""
        return self.status in FINAL_COMPOSITION_STATES

    @property
    def is_live(self) -> bool:
        """Whether its progress may still change: not finished, or a failed
        group with members still running (they go on after the first failure)."""
        if self.status == CompositionStatus.FAILED and self.kind == CompositionKind.GROUP:
            return self.completed + self.failed + self.cancelled < self.total
        return not self.is_final

    @property
    def duration(self) -> datetime.timedelta | None:
        """From the first start to the end (or to now while running)."""
        if self.started is None:
            return None
        return (self.finished or timezone.now()) - self.started


class Dashboard(Composition):
    """A stand-in that gives the dashboard its entry in the admin's app list."""

    class Meta:
        proxy = True
        app_label = "django_actors"
        verbose_name = _("dashboard")
        verbose_name_plural = _("dashboard")
        default_permissions = ()


def from_millis(value: int | None) -> datetime.datetime | None:
    """An aware UTC datetime from epoch milliseconds."""
    if value is None:
        return None
    return datetime.datetime.fromtimestamp(value / 1000, tz=datetime.UTC)


class MessageRecordQuerySet(models.QuerySet["MessageRecord"]):
    """Queries on mirrored messages."""

    def failed(self) -> MessageRecordQuerySet:
        """Messages that failed for good (dead-lettered)."""
        return self.filter(status=MessageStatus.FAILED)

    def older_than(self, cutoff: datetime.datetime) -> MessageRecordQuerySet:
        """Messages last updated before ``cutoff``."""
        return self.filter(updated__lt=cutoff)


class MessageRecord(models.Model):
    """One message, as last seen: state, timings, previews and traceback."""

    message_id = models.CharField(_("message id"), max_length=64, primary_key=True)
    actor_name = models.CharField(_("actor"), max_length=255)
    queue_name = models.CharField(_("queue"), max_length=128)
    composition = models.ForeignKey(
        Composition,
        verbose_name=_("composition"),
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,  # da_msg_comp_status covers it
        related_name="messages",
    )
    root_id = models.CharField(_("root composition"), max_length=64, null=True, blank=True)
    position = models.IntegerField(_("position"), null=True, blank=True)
    status = models.CharField(_("status"), max_length=16, choices=MessageStatus.choices)
    #: Orders the events of a message (see :mod:`django_actors.mirror`); only grows.
    rank = models.IntegerField(default=0, editable=False)
    retries = models.IntegerField(_("retries"), default=0)
    args_preview = models.TextField(_("arguments"), blank=True)
    result_preview = models.TextField(_("result"), blank=True)
    traceback = models.TextField(_("traceback"), blank=True)
    # Times in epoch milliseconds, like the messages carry them: a flush
    # writes them for every message, with no conversion. The ``*_at``
    # properties give datetimes.
    enqueued_ms = models.BigIntegerField(_("enqueued (epoch ms)"), null=True, blank=True)
    eta_ms = models.BigIntegerField(_("runs at (epoch ms)"), null=True, blank=True)
    started_ms = models.BigIntegerField(_("started (epoch ms)"), null=True, blank=True)
    finished_ms = models.BigIntegerField(_("finished (epoch ms)"), null=True, blank=True)
    worker = models.CharField(_("worker"), max_length=255, blank=True)
    updated = models.DateTimeField(_("updated"), default=timezone.now, db_index=True)

    objects = MessageRecordQuerySet.as_manager()

    class Meta:
        app_label = "django_actors"
        db_table = "django_actors_mirror_message"
        verbose_name = _("message")
        verbose_name_plural = _("messages")
        ordering = ("-updated",)
        # Few indexes, partial where they can be: every flush writes this
        # table, and most messages belong to no composition.
        indexes = [
            models.Index(
                fields=["composition", "status"],
                name="da_msg_comp_status",
                condition=models.Q(composition__isnull=False),
            ),
            models.Index(fields=["root_id"], name="da_msg_root", condition=models.Q(root_id__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.actor_name} {self.message_id}"

    @property
    def enqueued_at(self) -> datetime.datetime | None:
        """When the message was created."""
        return from_millis(self.enqueued_ms)

    @property
    def eta(self) -> datetime.datetime | None:
        """When a delayed message is due."""
        return from_millis(self.eta_ms)

    @property
    def started_at(self) -> datetime.datetime | None:
        """When its last attempt started."""
        return from_millis(self.started_ms)

    @property
    def finished_at(self) -> datetime.datetime | None:
        """When its last attempt finished."""
        return from_millis(self.finished_ms)

    @property
    def duration(self) -> datetime.timedelta | None:
        """How long the last attempt ran."""
        if self.started_ms is None or self.finished_ms is None:
            return None
        return datetime.timedelta(milliseconds=self.finished_ms - self.started_ms)

    @property
    def can_retry(self) -> bool:
        """Whether the admin can put this message back on its queue."""
        return self.status == MessageStatus.FAILED


class MinuteStat(models.Model):
    """How many messages finished in one minute, for the dashboard's chart.

    Every flusher adds its counts to the minute's row (an upsert), so the
    chart reads 60 small rows instead of scanning the messages.
    """

    minute = models.DateTimeField(_("minute"), primary_key=True)
    succeeded = models.BigIntegerField(_("succeeded"), default=0)
    failed = models.BigIntegerField(_("failed"), default=0)

    class Meta:
        app_label = "django_actors"
        db_table = "django_actors_mirror_minute"
        verbose_name = _("minute of throughput")
        verbose_name_plural = _("minutes of throughput")
        ordering = ("minute",)

    def __str__(self) -> str:
        return f"{self.minute:%Y-%m-%d %H:%M}: {self.succeeded} succeeded, {self.failed} failed"


class WorkerRecord(models.Model):
    """A worker process, with the heartbeat its mirror flusher writes."""

    worker_id = models.CharField(_("worker"), max_length=255, primary_key=True)
    hostname = models.CharField(_("host"), max_length=255)
    pid = models.IntegerField(_("pid"))
    queues = models.TextField(_("queues"), blank=True)
    threads = models.IntegerField(_("threads"), default=0)
    in_flight = models.IntegerField(_("in flight"), default=0)
    processed = models.BigIntegerField(_("processed"), default=0)
    failed = models.BigIntegerField(_("failed"), default=0)
    started = models.DateTimeField(_("started"), default=timezone.now)
    heartbeat = models.DateTimeField(_("heartbeat"), default=timezone.now, db_index=True)
    stopped = models.DateTimeField(_("stopped"), null=True, blank=True)

    class Meta:
        app_label = "django_actors"
        db_table = "django_actors_mirror_worker"
        verbose_name = _("worker")
        verbose_name_plural = _("workers")
        ordering = ("-heartbeat",)

    def __str__(self) -> str:
        return self.worker_id

    @property
    def state(self) -> str:
        """``running``, ``stopped`` or ``lost`` (no heartbeat for a while)."""
        if self.stopped is not None:
            return "stopped"
        if timezone.now() - self.heartbeat > datetime.timedelta(seconds=WORKER_LOST_AFTER):
            return "lost"
        return "running"

    @property
    def badge(self) -> str:
        """The CSS name of :attr:`state` (a running worker is a healthy one)."""
        state = self.state
        return "alive" if state == "running" else state


__all__ = [
    "COMPOSITION_RANK",
    "FINAL_COMPOSITION_STATES",
    "FINAL_MESSAGE_STATES",
    "Composition",
    "CompositionKind",
    "CompositionStatus",
    "Dashboard",
    "MessageRecord",
    "MessageStatus",
    "MinuteStat",
    "WorkerRecord",
]
