"""The admin: compositions with live progress bars, their trees, messages,
workers, and a dashboard of queues, workers and throughput.

Seeing needs the view permission; the retry and cancel actions and buttons
need the change permission (see :data:`~django_actors.admin_views.RETRY_HELP`
and :data:`~django_actors.admin_views.CANCEL_HELP` for what they do). The
mirror tables are a read model: rows are never edited by hand.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from . import admin_views
from .models.mirror import Composition, Dashboard, MessageRecord, WorkerRecord
from .templatetags.django_actors_admin import duration, since, status_badge


class _Media:
    css = {"all": ("django_actors/mirror.css",)}
    js = ("django_actors/mirror.js",)


def _wrap(model_admin: admin.ModelAdmin[Any], view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Bind ``view`` to ``model_admin`` and put it behind the admin's login and CSRF checks."""

    @functools.wraps(view)
    def bound(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return view(request, model_admin, *args, **kwargs)

    return model_admin.admin_site.admin_view(bound)


class _ReadOnly:
    """Mirror rows are written by the mirror, never added by hand."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# Filters --------------------------------------------------------------------------------------


#: How many recent messages the actor and queue filters look at for their choices.
RECENT_FOR_CHOICES = 5000


def _recent_values(field: str, **filters: Any) -> list[tuple[str, str]]:
    """Distinct values of ``field`` among the most recently updated messages
    (the message table is large and these columns are not indexed)."""
    recent = MessageRecord.objects.filter(**filters).order_by("-updated").values_list(field, flat=True)
    values = sorted({value for value in recent[:RECENT_FOR_CHOICES] if value})
    return [(value, value) for value in values[:100]]


class ActorFilter(admin.SimpleListFilter):
    """Compositions with a member message of the chosen actor."""

    title = _("actor")
    parameter_name = "actor"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return _recent_values("actor_name", composition_id__isnull=False)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if not self.value():
            return queryset
        members = MessageRecord.objects.filter(actor_name=self.value()).values("composition_id")
        return queryset.filter(pk__in=members)


class _RecentValueFilter(admin.SimpleListFilter):
    """Filter messages by a column, offering the values of recent messages."""

    field = ""

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return _recent_values(self.field)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(**{self.field: self.value()}) if self.value() else queryset


class MessageActorFilter(_RecentValueFilter):
    title = _("actor")
    parameter_name = field = "actor_name"


class QueueFilter(_RecentValueFilter):
    title = _("queue")
    parameter_name = field = "queue_name"


class NestingFilter(admin.SimpleListFilter):
    """Top-level compositions, or nested ones."""

    title = _("level")
    parameter_name = "level"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, Any]]:
        return [("top", _("Top level")), ("nested", _("Nested"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "top":
            return queryset.filter(parent_id__isnull=True)
        if self.value() == "nested":
            return queryset.filter(parent_id__isnull=False)
        return queryset


# Compositions -----------------------------------------------------------------------------------


@admin.register(Composition)
class CompositionAdmin(_ReadOnly, admin.ModelAdmin):
    """Pipelines and groups with live progress bars; each opens on its tree."""

    list_display = ("short_id", "display_name", "progress", "created_display", "took")
    list_display_links = ("short_id", "display_name")
    list_filter = ("status", "kind", ActorFilter, NestingFilter, ("created", admin.DateFieldListFilter))
    search_fields = ("^id", "=root_id", "name")
    search_help_text = _("Search by id (or its beginning), by root id, or by name.")
    date_hierarchy = None
    list_per_page = 50
    actions = ["retry_failed", "cancel_compositions"]
    change_list_template = "admin/django_actors/composition/change_list.html"
    Media = _Media

    def get_urls(self) -> list[URLPattern]:
        urls = [
            path("dashboard/", _wrap(self, admin_views.dashboard), name="django_actors_dashboard"),
            path(
                "dashboard/fragment/",
                _wrap(self, admin_views.dashboard_fragment),
                name="django_actors_dashboard_fragment",
            ),
            path("progress/", _wrap(self, admin_views.progress_fragment), name="django_actors_composition_progress"),
            path(
                "<path:object_id>/tree/",
                _wrap(self, admin_views.tree_fragment),
                name="django_actors_composition_tree",
            ),
            path(
                "<path:object_id>/retry/",
                _wrap(self, admin_views.retry_composition),
                name="django_actors_composition_retry",
            ),
            path(
                "<path:object_id>/cancel/",
                _wrap(self, admin_views.cancel_composition_view),
                name="django_actors_composition_cancel",
            ),
        ]
        return urls + super().get_urls()

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        return admin_views.composition_detail(request, self, object_id)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra = {
            **(extra_context or {}),
            "retry_help": admin_views.RETRY_HELP,
            "cancel_help": admin_views.CANCEL_HELP,
            "refresh_period": 2000,
        }
        return super().changelist_view(request, extra)

    @admin.display(description=_("id"), ordering="id")
    def short_id(self, obj: Composition) -> str:
        return obj.pk[:12]

    @admin.display(description=_("name"), ordering="name")
    def display_name(self, obj: Composition) -> str:
        return format_html(
            '<span class="da-kind da-kind-{}">{}</span> {}',
            obj.kind,
            obj.get_kind_display(),
            obj.name or f"{obj.get_kind_display()} of {obj.total}",
        )

    @admin.display(description=_("created"), ordering="created")
    def created_display(self, obj: Composition) -> str:
        moment = timezone.localtime(obj.created)
        return format_html('<span title="{}">{}</span>', date_format(moment, "DATETIME_FORMAT"), since(obj.created))

    @admin.display(description=_("progress"), ordering="completed")
    def progress(self, obj: Composition) -> str:
        return render_to_string("admin/django_actors/composition/_progress.html", {"composition": obj})

    @admin.display(description=_("status"), ordering="status")
    def status_display(self, obj: Composition) -> str:
        return status_badge(obj.status, obj.get_status_display())

    @admin.display(description=_("duration"))
    def took(self, obj: Composition) -> str:
        return duration(obj.duration)

    @admin.action(description=_("Retry the failed messages of the selected compositions"), permissions=["change"])
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[Composition]) -> None:
        from .mirror import retry_messages

        ids = admin_views.failed_message_ids(list(queryset))
        admin_views._report_retry(request, self, retry_messages(ids))

    @admin.action(description=_("Cancel the selected compositions"), permissions=["change"])
    def cancel_compositions(self, request: HttpRequest, queryset: QuerySet[Composition]) -> None:
        admin_views.report_cancel(request, self, list(queryset))


@admin.register(Dashboard)
class DashboardAdmin(admin.ModelAdmin):
    """The dashboard's entry in the app list: it opens the dashboard."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        user = request.user
        return bool(
            user.is_active
            and user.is_staff
            and (user.has_perm("django_actors.view_composition") or user.has_perm("django_actors.change_composition"))
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        from django.http import HttpResponseRedirect

        if not self.has_view_permission(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        return HttpResponseRedirect(reverse("admin:django_actors_dashboard"))

    def get_urls(self) -> list[URLPattern]:
        return [path("", self.admin_site.admin_view(self.changelist_view), name="django_actors_dashboard_changelist")]


# Messages -------------------------------------------------------------------------------------------


@admin.register(MessageRecord)
class MessageRecordAdmin(_ReadOnly, admin.ModelAdmin):
    """Every mirrored message: status, timings, previews and traceback."""

    list_display = (
        "short_id", "actor_name", "queue_name", "status_display", "retries", "composition_link", "enqueued",
        "took", "worker",
    )  # fmt: skip
    list_display_links = ("short_id", "actor_name")
    list_filter = (
        "status",
        MessageActorFilter,
        QueueFilter,
        ("updated", admin.DateFieldListFilter),
    )
    search_fields = ("^message_id", "=root_id", "=composition__id", "actor_name")
    search_help_text = _("Search by message id (or its beginning), by composition id, or by actor.")
    list_per_page = 100
    list_select_related = False
    actions = ["retry_selected"]
    Media = _Media

    def get_urls(self) -> list[URLPattern]:
        urls = [
            path(
                "<path:object_id>/retry/",
                _wrap(self, admin_views.retry_message),
                name="django_actors_messagerecord_retry",
            ),
        ]
        return urls + super().get_urls()

    def get_queryset(self, request: HttpRequest) -> QuerySet[MessageRecord]:
        return super().get_queryset(request).defer("traceback", "result_preview")

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        return admin_views.message_detail(request, self, object_id)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return super().changelist_view(request, {**(extra_context or {}), "retry_help": admin_views.RETRY_HELP})

    @admin.display(description=_("id"), ordering="message_id")
    def short_id(self, obj: MessageRecord) -> str:
        return obj.pk[:13]

    @admin.display(description=_("status"), ordering="status")
    def status_display(self, obj: MessageRecord) -> str:
        return status_badge(obj.status, obj.get_status_display())

    @admin.display(description=_("composition"))
    def composition_link(self, obj: MessageRecord) -> str:
        if not obj.composition_id:
            return "-"
        url = reverse("admin:django_actors_composition_change", args=[obj.composition_id])
        position = "" if obj.position is None else f" #{obj.position}"
        return format_html('<a href="{}">{}{}</a>', url, obj.composition_id[:12], position)

    @admin.display(description=_("enqueued"), ordering="enqueued_ms")
    def enqueued(self, obj: MessageRecord) -> str:
        moment = obj.enqueued_at
        if moment is None:
            return "-"
        return format_html(
            '<span title="{}">{}</span>', date_format(timezone.localtime(moment), "DATETIME_FORMAT"), since(moment)
        )

    @admin.display(description=_("duration"))
    def took(self, obj: MessageRecord) -> str:
        return duration(obj.duration)

    @admin.action(description=_("Retry the selected failed messages"), permissions=["change"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[MessageRecord]) -> None:
        from .mirror import retry_messages

        ids = list(queryset.filter(status="failed").values_list("pk", flat=True))
        admin_views._report_retry(request, self, retry_messages(ids))


# Workers -------------------------------------------------------------------------------------------------


@admin.register(WorkerRecord)
class WorkerRecordAdmin(_ReadOnly, admin.ModelAdmin):
    """Worker processes and their heartbeats (written by each worker's mirror flusher)."""

    list_display = (
        "worker_id", "hostname", "pid", "state_display", "queues", "threads", "in_flight", "processed", "failed",
        "heartbeat", "started",
    )  # fmt: skip
    list_filter = ("hostname",)
    search_fields = ("worker_id", "hostname")
    Media = _Media

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("state"))
    def state_display(self, obj: WorkerRecord) -> str:
        return status_badge(obj.badge, obj.state)


__all__ = ["CompositionAdmin", "DashboardAdmin", "MessageRecordAdmin", "WorkerRecordAdmin"]
