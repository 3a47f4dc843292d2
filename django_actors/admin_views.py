"""The admin's extra views: the dashboard, a composition's tree, the HTML
fragments the pages poll every two seconds, and the retry and cancel buttons.

They are mounted by :mod:`django_actors.admin` with ``ModelAdmin.get_urls()``
and wrapped in ``admin_site.admin_view``, so login, staff status and CSRF
come from the admin. Seeing needs the view permission on compositions (or
messages); retrying and cancelling need the change permission.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django.views.decorators.http import require_POST

from .models.mirror import (
    FINAL_COMPOSITION_STATES,
    FINAL_MESSAGE_STATES,
    Composition,
    CompositionStatus,
    MessageRecord,
    MessageStatus,
    MinuteStat,
    WorkerRecord,
)
from .redaction import mask_urls

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

logger = logging.getLogger(__name__)

#: The most compositions and messages a tree page shows.
MAX_TREE_COMPOSITIONS = 300
MAX_TREE_MESSAGES = 1000
#: The most members listed under one composition before "and N more".
MAX_MEMBERS = 100
#: How many compositions one progress-fragment request may ask for.
MAX_PROGRESS_IDS = 200

#: Help text shown next to the retry and cancel buttons and actions.
RETRY_HELP = gettext_lazy(
    "Retry puts failed (dead-lettered) messages back on their queues, unchanged: same message id, "
    "arguments and retry count, so each runs once more under its actor's retry policy. Retrying the "
    "failed messages of a composition also reopens it, so that once they succeed its pipeline goes on "
    "and its group completes (callbacks fire then); a composition whose other failed members are not "
    "retried stays failed. Messages no longer in the broker's dead letters are reported and left alone."
)
CANCEL_HELP = gettext_lazy(
    "Cancel marks the composition (and every composition enclosing it) cancelled in the results backend. "
    "Its messages that have not started yet, nested compositions included, are skipped when a worker "
    "picks them up; messages already running finish. Callers waiting on it get CompositionCancelled. "
    "It cannot be undone."
)


def _refresh_period() -> int:
    return 2000


# Permissions ---------------------------------------------------------------------------------


def _check(request: HttpRequest, model_admin: ModelAdmin[Any], change: bool = False) -> None:
    allowed = (
        model_admin.has_change_permission(request) if change else model_admin.has_view_or_change_permission(request)
    )
    if not allowed:
        raise PermissionDenied


# The composition tree --------------------------------------------------------------------------


@dataclasses.dataclass
class Node:
    """One composition of a tree, with its members in order."""

    composition: Composition
    members: list[Member]
    hidden: int = 0
    missing: int = 0


@dataclasses.dataclass
class Member:
    """A member of a composition: a message, a nested composition, or a step not started yet."""

    position: int | None
    message: MessageRecord | None = None
    node: Node | None = None

    @property
    def kind(self) -> str:
        if self.node is not None:
            return "composition"
        return "message" if self.message is not None else "placeholder"


def build_tree(composition: Composition) -> Node:
    """The tree under ``composition``: three queries, whatever its depth.

    Very large trees are cut: the failed and running messages first, then
    the others by position.
    """
    compositions = list(
        Composition.objects.filter(root_id=composition.root_id).order_by("created")[:MAX_TREE_COMPOSITIONS]
    )
    if composition.pk not in {c.pk for c in compositions}:
        compositions.append(composition)
    in_tree = MessageRecord.objects.filter(root_id=composition.root_id).order_by("composition_id", "position")
    notable = in_tree.filter(status__in=(MessageStatus.FAILED, MessageStatus.STARTED, MessageStatus.RETRYING))
    records = {record.pk: record for record in notable[: MAX_TREE_MESSAGES // 2]}
    for record in in_tree[:MAX_TREE_MESSAGES]:
        if len(records) >= MAX_TREE_MESSAGES:
            break
        records.setdefault(record.pk, record)
    children: dict[str | None, list[Composition]] = defaultdict(list)
    for item in compositions:
        children[item.parent_id].append(item)
    by_composition: dict[str | None, list[MessageRecord]] = defaultdict(list)
    for record in records.values():
        by_composition[record.composition_id].append(record)

    def node_for(item: Composition, depth: int) -> Node:
        members: list[Member] = []
        if depth < 20:
            members += [Member(position=c.position, node=node_for(c, depth + 1)) for c in children.get(item.pk, [])]
        members += [Member(position=r.position, message=r) for r in by_composition.get(item.pk, [])]
        members.sort(key=lambda m: (m.position is None, m.position or 0))
        node = Node(composition=item, members=members)
        if item.kind == "pipeline" and item.total:
            seen = {m.position for m in members}
            for position in range(item.total):
                if position not in seen:
                    node.members.append(Member(position=position))
            node.members.sort(key=lambda m: (m.position is None, m.position or 0))
        else:
            node.missing = max(item.total - len(members), 0)
        if len(node.members) > MAX_MEMBERS:
            # Keep the failed and running ones in view, then the first by position.
            def interest(member: Member) -> int:
                status = (
                    member.message.status if member.message else member.node.composition.status if member.node else ""
                )
                return {"failed": 0, "started": 1, "retrying": 1, "running": 1}.get(status, 2)

            ranked = sorted(node.members, key=lambda m: (interest(m), m.position or 0))
            kept = {id(m) for m in ranked[:MAX_MEMBERS]}
            node.hidden = len(node.members) - MAX_MEMBERS
            node.members = [m for m in node.members if id(m) in kept]
        return node

    return node_for(composition, 0)


def _ancestors(composition: Composition) -> list[Composition]:
    found: list[Composition] = []
    parent_id = composition.parent_id
    seen = {composition.pk}
    while parent_id and parent_id not in seen and len(found) < 20:
        seen.add(parent_id)
        parent = Composition.objects.filter(pk=parent_id).first()
        if parent is None:
            break
        found.insert(0, parent)
        parent_id = parent.parent_id
    return found


def _tree_context(request: HttpRequest, model_admin: ModelAdmin[Any], composition: Composition) -> dict[str, Any]:
    tree = build_tree(composition)
    live = any(node.composition.is_live for node in _walk(tree)) or any(
        member.message.status not in FINAL_MESSAGE_STATES
        for node in _walk(tree)
        for member in node.members
        if member.message is not None
    )
    nodes = _walk(tree)
    return {
        "composition": composition,
        "tree": tree,
        "live": live,
        "has_failed": any(
            member.message is not None and member.message.status == MessageStatus.FAILED
            for node in nodes
            for member in node.members
        ),
        "can_change": model_admin.has_change_permission(request),
        "retry_help": RETRY_HELP,
        "cancel_help": CANCEL_HELP,
        "opts": Composition._meta,
    }


def _walk(node: Node) -> list[Node]:
    found = [node]
    for member in node.members:
        if member.node is not None:
            found.extend(_walk(member.node))
    return found


def composition_detail(request: HttpRequest, model_admin: ModelAdmin[Any], object_id: str) -> TemplateResponse:
    """A composition's page: progress, its tree, retry and cancel buttons."""
    _check(request, model_admin)
    composition = get_object_or_404(Composition, pk=object_id)
    context = {
        **model_admin.admin_site.each_context(request),
        **_tree_context(request, model_admin, composition),
        "title": _("%(kind)s %(name)s")
        % {"kind": composition.get_kind_display().capitalize(), "name": composition.name or composition.pk},
        "subtitle": composition.pk,
        "ancestors": _ancestors(composition),
        "refresh_period": _refresh_period(),
        "has_view_permission": True,
        "original": composition,
    }
    return TemplateResponse(request, "admin/django_actors/composition/detail.html", context)


def tree_fragment(request: HttpRequest, model_admin: ModelAdmin[Any], object_id: str) -> TemplateResponse:
    """The polled part of a composition's page."""
    _check(request, model_admin)
    composition = get_object_or_404(Composition, pk=object_id)
    return TemplateResponse(
        request, "admin/django_actors/composition/_live_tree.html", _tree_context(request, model_admin, composition)
    )


def progress_fragment(request: HttpRequest, model_admin: ModelAdmin[Any]) -> TemplateResponse:
    """Progress bars for ``?id=...&id=...``, polled by the composition list."""
    _check(request, model_admin)
    ids = request.GET.getlist("id")[:MAX_PROGRESS_IDS]
    compositions = list(Composition.objects.filter(pk__in=ids))
    return TemplateResponse(
        request, "admin/django_actors/composition/_progress_list.html", {"compositions": compositions}
    )


# Retry and cancel ------------------------------------------------------------------------------


def _report_retry(request: HttpRequest, model_admin: ModelAdmin[Any], report: Any) -> None:
    if report.requeued:
        model_admin.message_user(
            request,
            ngettext(
                "%d failed message was put back on its queue.",
                "%d failed messages were put back on their queues.",
                len(report.requeued),
            )
            % len(report.requeued),
            messages.SUCCESS,
        )
    if report.reopened:
        model_admin.message_user(
            request,
            ngettext("%d composition was reopened.", "%d compositions were reopened.", len(report.reopened))
            % len(report.reopened),
            messages.SUCCESS,
        )
    if report.missing:
        model_admin.message_user(
            request,
            ngettext(
                "%d message was no longer in the broker's dead letters and was left as it was.",
                "%d messages were no longer in the broker's dead letters and were left as they were.",
                len(report.missing),
            )
            % len(report.missing),
            messages.WARNING,
        )
    if report.errors:
        model_admin.message_user(
            request,
            ngettext(
                "%d message could not be put back: the broker failed (see the log).",
                "%d messages could not be put back: the broker failed (see the log).",
                len(report.errors),
            )
            % len(report.errors),
            messages.ERROR,
        )
    if not (report.requeued or report.missing or report.errors):
        model_admin.message_user(request, _("There was no failed message to retry."), messages.INFO)


@require_POST
def retry_composition(request: HttpRequest, model_admin: ModelAdmin[Any], object_id: str) -> HttpResponseRedirect:
    """Retry every failed message of a composition's tree (change permission, POST)."""
    from .mirror import retry_messages

    _check(request, model_admin, change=True)
    composition = get_object_or_404(Composition, pk=object_id)
    ids = failed_message_ids([composition])
    _report_retry(request, model_admin, retry_messages(ids))
    return HttpResponseRedirect(_composition_url(composition.pk))


@require_POST
def cancel_composition_view(request: HttpRequest, model_admin: ModelAdmin[Any], object_id: str) -> HttpResponseRedirect:
    """Cancel a composition (change permission, POST)."""
    _check(request, model_admin, change=True)
    composition = get_object_or_404(Composition, pk=object_id)
    report_cancel(request, model_admin, [composition])
    return HttpResponseRedirect(_composition_url(composition.pk))


def report_cancel(request: HttpRequest, model_admin: ModelAdmin[Any], compositions: list[Composition]) -> None:
    """Cancel ``compositions`` and tell the user what happened."""
    from .composition import CompositionNotFound
    from .mirror import cancel_composition

    done, skipped, gone = 0, 0, 0
    for composition in compositions:
        if composition.status in FINAL_COMPOSITION_STATES:
            skipped += 1
            continue
        try:
            if cancel_composition(composition.pk):
                done += 1
            else:
                skipped += 1
        except CompositionNotFound:
            gone += 1
    if done:
        model_admin.message_user(
            request,
            ngettext("%d composition was cancelled.", "%d compositions were cancelled.", done) % done,
            messages.SUCCESS,
        )
    if skipped:
        model_admin.message_user(
            request,
            ngettext("%d composition had already finished.", "%d compositions had already finished.", skipped)
            % skipped,
            messages.WARNING,
        )
    if gone:
        model_admin.message_user(
            request,
            ngettext(
                "%d composition is no longer in the results backend (expired); it cannot be cancelled.",
                "%d compositions are no longer in the results backend (expired); they cannot be cancelled.",
                gone,
            )
            % gone,
            messages.ERROR,
        )


def failed_message_ids(compositions: list[Composition]) -> list[str]:
    """The failed messages of the trees under ``compositions``."""
    roots = {c.root_id for c in compositions}
    wanted = {c.pk for c in compositions}
    tree = list(Composition.objects.filter(root_id__in=roots).values_list("pk", "parent_id"))
    children: dict[str | None, list[str]] = defaultdict(list)
    for pk, parent_id in tree:
        children[parent_id].append(pk)
    pending = list(wanted)
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in wanted:
                wanted.add(child)
                pending.append(child)
    return list(
        MessageRecord.objects.filter(composition_id__in=wanted, status=MessageStatus.FAILED).values_list(
            "pk", flat=True
        )
    )


def _composition_url(pk: str) -> str:
    return reverse("admin:django_actors_composition_change", args=[pk])


# Messages -----------------------------------------------------------------------------------


def message_detail(request: HttpRequest, model_admin: ModelAdmin[Any], object_id: str) -> TemplateResponse:
    """A message's page: status, timings, arguments, result, traceback."""
    _check(request, model_admin)
    record = get_object_or_404(MessageRecord, pk=object_id)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": _("Message %(actor)s") % {"actor": record.actor_name or _("(undecodable)")},
        "subtitle": record.pk,
        "record": record,
        "composition": Composition.objects.filter(pk=record.composition_id).first() if record.composition_id else None,
        "can_change": model_admin.has_change_permission(request),
        "retry_help": RETRY_HELP,
        "opts": MessageRecord._meta,
        "has_view_permission": True,
        "original": record,
    }
    return TemplateResponse(request, "admin/django_actors/messagerecord/detail.html", context)


@require_POST
def retry_message(request: HttpRequest, model_admin: ModelAdmin[Any], object_id: str) -> HttpResponseRedirect:
    """Retry one failed message (change permission, POST)."""
    from .mirror import retry_messages

    _check(request, model_admin, change=True)
    record = get_object_or_404(MessageRecord, pk=object_id)
    _report_retry(request, model_admin, retry_messages([record.pk]))
    return HttpResponseRedirect(reverse("admin:django_actors_messagerecord_change", args=[record.pk]))


# The dashboard ----------------------------------------------------------------------------------


@dataclasses.dataclass
class QueueRow:
    """One queue on the dashboard; ``None`` where the broker cannot tell."""

    name: str
    ready: int | None = None
    delayed: int | None = None
    in_flight: int | None = None
    dead: int | None = None
    error: str = ""


def queue_stats(broker: Any, queue_name: str) -> QueueRow:
    """Ask the broker how many messages a queue holds.

    Uses the broker's ``stats(queue_name)`` when it has one (an object or
    dict with ``ready``, ``delayed``, ``in_flight`` and ``dead``), else what
    it offers (``pending_count``/``dead_letter_count``, the stub's queues).
    """
    row = QueueRow(name=queue_name)
    try:
        stats = getattr(broker, "stats", None)
        if callable(stats):
            found = stats(queue_name)
            get = found.get if isinstance(found, dict) else lambda name: getattr(found, name, None)
            row.ready, row.delayed, row.in_flight, row.dead = (
                get("ready"), get("delayed"), get("in_flight"), get("dead")
            )  # fmt: skip
            return row
        if callable(getattr(broker, "pending_count", None)):
            row.ready = broker.pending_count(queue_name)
        if callable(getattr(broker, "dead_letter_count", None)):
            row.dead = broker.dead_letter_count(queue_name)
        queues = getattr(broker, "queues", None)
        if isinstance(queues, dict) and queue_name in queues:
            queue = queues[queue_name]
            row.ready, row.delayed, row.in_flight = len(queue.ready), len(queue.delayed), queue.unacked
            letters = getattr(broker, "dead_letters_by_queue", {})
            row.dead = len(letters.get(queue_name, []))
    except Exception as exc:
        logger.warning("Could not read the stats of queue %r.", queue_name, exc_info=True)
        row.error = mask_urls(f"{type(exc).__name__}: {exc}")
    return row


def throughput(minutes: int = 60) -> list[dict[str, Any]]:
    """Messages finished (succeeded, dead-lettered) per minute over the last ``minutes``.

    Read from the per-minute rows the mirror's flushers keep: one small query.
    """
    now = timezone.now().replace(second=0, microsecond=0)
    start = now - datetime.timedelta(minutes=minutes - 1)
    counts = {
        row.minute: {"succeeded": row.succeeded, "failed": row.failed}
        for row in MinuteStat.objects.filter(minute__gte=start, minute__lte=now)
    }
    series = []
    for index in range(minutes):
        minute = start + datetime.timedelta(minutes=index)
        series.append({"minute": minute, **counts.get(minute, {"succeeded": 0, "failed": 0})})
    return series


def dashboard_context(request: HttpRequest) -> dict[str, Any]:
    """What the dashboard shows: queues, workers, compositions and throughput."""
    from .broker import get_broker

    error = ""
    queues: list[QueueRow] = []
    try:
        broker = get_broker()
        names = set(broker.get_declared_queues())
        names |= set(MessageRecord.objects.order_by().values_list("queue_name", flat=True).distinct()[:200])
        queues = [queue_stats(broker, name) for name in sorted(n for n in names if n)]
    except Exception as exc:
        logger.warning("The dashboard could not reach the broker.", exc_info=True)
        error = mask_urls(f"{type(exc).__name__}: {exc}")
    since = timezone.now() - datetime.timedelta(hours=24)
    workers = list(WorkerRecord.objects.filter(heartbeat__gte=since).order_by("stopped", "-heartbeat")[:100])
    series = throughput()
    hour = timezone.now() - datetime.timedelta(hours=1)
    return {
        "queues": queues,
        "broker_error": error,
        "workers": workers,
        "series": series,
        "succeeded_last_hour": sum(point["succeeded"] for point in series),
        "failed_last_hour": sum(point["failed"] for point in series),
        "running_compositions": Composition.objects.filter(
            status__in=(CompositionStatus.PENDING, CompositionStatus.RUNNING)
        ).count(),
        "failed_compositions": Composition.objects.filter(status=CompositionStatus.FAILED, updated__gte=hour).count(),
        "recent_compositions": list(Composition.objects.roots().order_by("-created")[:10]),
        "in_flight": sum(w.in_flight for w in workers if w.state == "running"),
        "now": timezone.now(),
    }


def dashboard(request: HttpRequest, model_admin: ModelAdmin[Any]) -> TemplateResponse:
    """The dashboard page."""
    _check(request, model_admin)
    context = {
        **model_admin.admin_site.each_context(request),
        **dashboard_context(request),
        "title": _("Actors dashboard"),
        "opts": Composition._meta,
        "refresh_period": _refresh_period(),
    }
    return TemplateResponse(request, "admin/django_actors/dashboard.html", context)


def dashboard_fragment(request: HttpRequest, model_admin: ModelAdmin[Any]) -> HttpResponse:
    """The polled part of the dashboard."""
    _check(request, model_admin)
    return TemplateResponse(request, "admin/django_actors/_dashboard_body.html", dashboard_context(request))
