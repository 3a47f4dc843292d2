"""Template tags for the admin pages: status badges, progress bars, durations
and the throughput chart (inline SVG, no JavaScript library).

Every value is escaped by ``format_html``; colours come from the admin's CSS
variables (see ``static/django_actors/mirror.css``), so dark mode follows.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from django import template
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

register = template.Library()


@register.simple_tag
def status_badge(status: str, label: str | None = None) -> SafeString:
    """A coloured badge for a message, composition or worker state."""
    return format_html('<span class="da-badge da-status-{}">{}</span>', status, label or status)


@register.filter
def duration(value: datetime.timedelta | None) -> str:
    """A short human duration: ``850 ms``, ``12.3 s``, ``4 min 5 s``, ``2 h 3 min``."""
    if value is None:
        return "-"
    seconds = value.total_seconds()
    if seconds < 0:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


@register.filter
def short_id(value: Any, length: int = 12) -> str:
    """The beginning of an id."""
    return str(value or "")[:length]


@register.filter
def since(value: datetime.datetime | None) -> str:
    """How long ago, shortly: ``3 s ago``."""
    if value is None:
        return "-"
    return f"{duration(timezone.now() - value)} ago"


@register.inclusion_tag("admin/django_actors/composition/_progress.html")
def progress_bar(composition: Any) -> dict[str, Any]:
    """A composition's progress bar: done / total, percentage, failures in red."""
    return {"composition": composition}


@register.simple_tag
def throughput_chart(series: Sequence[dict[str, Any]], width: int = 720, height: int = 160) -> SafeString:
    """An SVG bar chart of messages finished per minute (succeeded, failed stacked).

    Parameters:
      series: ``{"minute": datetime, "succeeded": int, "failed": int}`` per minute, oldest first.
      width, height: the drawing's size in SVG units (it scales to its box).
    """
    count = max(len(series), 1)
    top = 14
    bottom = height - 18
    plot = bottom - top
    peak = max([point["succeeded"] + point["failed"] for point in series] + [1])
    step = width / count
    bars = []
    for index, point in enumerate(series):
        ok, bad = int(point["succeeded"]), int(point["failed"])
        x = round(index * step + 1, 2)
        w = round(max(step - 2, 1), 2)
        ok_h = round(plot * ok / peak, 2)
        bad_h = round(plot * bad / peak, 2)
        minute = (
            timezone.localtime(point["minute"]).strftime("%H:%M")
            if timezone.is_aware(point["minute"])
            else point["minute"].strftime("%H:%M")
        )
        bars.append((x, w, round(bottom - ok_h, 2), ok_h, round(bottom - ok_h - bad_h, 2), bad_h, minute, ok, bad))
    rects = format_html_join(
        "",
        '<g class="da-chart-bar"><title>{} \u2014 {} succeeded, {} failed</title>'
        '<rect class="da-chart-ok" x="{}" y="{}" width="{}" height="{}"></rect>'
        '<rect class="da-chart-failed" x="{}" y="{}" width="{}" height="{}"></rect></g>',
        (
            (minute, ok, bad, x, ok_y, w, ok_h, x, bad_y, w, bad_h)
            for x, w, ok_y, ok_h, bad_y, bad_h, minute, ok, bad in bars
        ),
    )
    first = bars[0][6] if bars else ""
    last = bars[-1][6] if bars else ""
    return format_html(
        '<svg class="da-chart" viewBox="0 0 {w} {h}" role="img" '
        'aria-label="Messages finished per minute over the last hour, peak {peak} per minute">'
        '<line class="da-chart-axis" x1="0" y1="{bottom}" x2="{w}" y2="{bottom}"></line>'
        '<line class="da-chart-grid" x1="0" y1="{top}" x2="{w}" y2="{top}"></line>'
        '<line class="da-chart-grid" x1="0" y1="{mid}" x2="{w}" y2="{mid}"></line>'
        "{rects}"
        '<text class="da-chart-label" x="2" y="10">{peak}/min</text>'
        '<text class="da-chart-label" x="2" y="{label_y}">{first}</text>'
        '<text class="da-chart-label" x="{w}" y="{label_y}" text-anchor="end">{last}</text>'
        "</svg>",
        w=width,
        h=height,
        peak=peak,
        top=top,
        mid=round(top + plot / 2, 2),
        bottom=bottom,
        rects=rects,
        label_y=height - 4,
        first=first,
        last=last,
    )
