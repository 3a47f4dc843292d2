"""The admin: every view, filter, action and permission, with Django's test client."""

from __future__ import annotations

import datetime
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

import django_actors
from django_actors.broker import set_broker
from django_actors.composition import group
from django_actors.models.mirror import Composition, MessageRecord, MinuteStat, WorkerRecord
from django_actors.worker import Worker
from tests.test_mirror import drain, make_broker, recorder_of

pytestmark = pytest.mark.django_db(transaction=True)

NOW = timezone.now()
NOW_MS = int(NOW.timestamp() * 1000)


def url(name: str, *args: Any) -> str:
    return reverse(f"admin:{name}", args=args)


# Data ------------------------------------------------------------------------------------


def composition(pk: str, **fields: Any) -> Composition:
    fields.setdefault("kind", "group")
    fields.setdefault("root_id", pk)
    fields.setdefault("status", "running")
    fields.setdefault("total", 1)
    return Composition.objects.create(id=pk, **fields)


def message(pk: str, **fields: Any) -> MessageRecord:
    fields.setdefault("actor_name", "work")
    fields.setdefault("queue_name", "default")
    fields.setdefault("status", "succeeded")
    fields.setdefault("enqueued_ms", NOW_MS)
    return MessageRecord.objects.create(message_id=pk, **fields)


@pytest.fixture
def tree() -> dict[str, Any]:
    """A pipeline (fetch -> group of 3 -> save, the last not started) and a running group."""
    pipe = composition(
        "p1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", kind="pipeline", name="fetch \u2192 group \u2192 save", total=3,
        completed=1, failed=1, status="failed", status_rank=2, started=NOW, finished=NOW,
    )  # fmt: skip
    inner = composition(
        "g1bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", root_id=pipe.pk, parent=pipe, position=1, name="split", total=3,
        completed=2, failed=1, status="failed", status_rank=2, started=NOW,
    )  # fmt: skip
    running = composition(
        "g2cccccccccccccccccccccccccccccc", name="resize", total=5, completed=2, started=NOW,
        created=NOW - datetime.timedelta(days=3),
    )  # fmt: skip
    message(
        "m-fetch",
        actor_name="fetch",
        composition=pipe,
        root_id=pipe.pk,
        position=0,
        result_preview="'page'",
        started_ms=NOW_MS - 2000,
        finished_ms=NOW_MS - 1000,
    )
    message("m-split-0", actor_name="split", composition=inner, root_id=pipe.pk, position=0, result_preview="1")
    message("m-split-1", actor_name="split", composition=inner, root_id=pipe.pk, position=1, result_preview="2")
    message(
        "m-split-2",
        actor_name="split",
        composition=inner,
        root_id=pipe.pk,
        position=2,
        status="failed",
        traceback="Traceback (most recent call last):\nValueError: split exploded",
    )
    for i in range(5):
        message(
            f"m-resize-{i}",
            actor_name="resize",
            composition=running,
            root_id=running.pk,
            position=i,
            status="succeeded" if i < 2 else "enqueued",
        )
    return {"pipeline": pipe, "inner": inner, "running": running}


@pytest.fixture
def broker() -> Iterator[Any]:
    from django_actors import broker as broker_module

    previous = broker_module._broker
    stub = make_broker(flush_interval=60_000)
    set_broker(stub)
    yield stub
    stub.emit_before("process_stop")
    stub.close()
    broker_module._broker = previous


@pytest.fixture
def superuser_client(client: Client) -> Client:
    user = User.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


def staff_with(*codenames: str) -> Client:
    user = User.objects.create_user(f"staff-{'-'.join(codenames) or 'none'}", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="django_actors", codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def viewer() -> Client:
    return staff_with("view_composition", "view_messagerecord", "view_workerrecord")


# Composition list ----------------------------------------------------------------------------


def test_the_composition_list_shows_progress_bars(superuser_client, tree):
    response = superuser_client.get(url("django_actors_composition_changelist"))
    assert response.status_code == 200
    html = response.content.decode()
    running = _bar(html, tree["running"].pk)
    assert "2</span> / 5" in running and "40%" in running and 'data-live="1"' in running
    failed = _bar(html, tree["pipeline"].pk)
    assert "da-has-failed" in failed and "1 failed" in failed and 'data-live="0"' in failed
    assert 'width="33"' in failed  # 1 of 3 done
    assert "django_actors/mirror.js" in html and "django_actors/mirror.css" in html
    assert url("django_actors_dashboard") in html
    assert "Retry puts failed (dead-lettered) messages back" in html  # the actions are explained


def _bar(html: str, pk: str) -> str:
    match = re.search(rf'<div class="da-progress[^"]*" data-composition="{pk}".*?</div>', html, re.S)
    assert match, f"no progress bar for {pk}"
    return match.group(0)


def _listed(client: Client, **params: str) -> set[str]:
    response = client.get(url("django_actors_composition_changelist"), params)
    assert response.status_code == 200
    return set(re.findall(r'data-composition="([^"]+)"', response.content.decode()))


def test_the_composition_list_filters(superuser_client, tree):
    pipe, inner, running = tree["pipeline"].pk, tree["inner"].pk, tree["running"].pk
    assert _listed(superuser_client) == {pipe, inner, running}
    assert _listed(superuser_client, status="failed") == {pipe, inner}
    assert _listed(superuser_client, status="running") == {running}
    assert _listed(superuser_client, kind="pipeline") == {pipe}
    assert _listed(superuser_client, kind="group") == {inner, running}
    assert _listed(superuser_client, actor="split") == {inner}
    assert _listed(superuser_client, actor="resize") == {running}
    assert _listed(superuser_client, level="top") == {pipe, running}
    assert _listed(superuser_client, level="nested") == {inner}
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    since = {"created__gte": str(today), "created__lt": str(today + datetime.timedelta(days=1))}
    assert _listed(superuser_client, **since) == {pipe, inner}


def test_the_composition_list_searches_by_id(superuser_client, tree):
    assert _listed(superuser_client, q="g2ccc") == {tree["running"].pk}
    assert _listed(superuser_client, q=tree["pipeline"].pk) == {tree["pipeline"].pk, tree["inner"].pk}  # root id
    assert _listed(superuser_client, q="zzz") == set()


def test_the_progress_fragment_returns_the_bars_asked_for(superuser_client, tree):
    running = tree["running"]
    response = superuser_client.get(url("django_actors_composition_progress"), {"id": [running.pk, "nope"]})
    assert response.status_code == 200
    html = response.content.decode()
    assert set(re.findall(r'data-composition="([^"]+)"', html)) == {running.pk}
    Composition.objects.filter(pk=running.pk).update(completed=5, status="succeeded")
    html = superuser_client.get(url("django_actors_composition_progress"), {"id": running.pk}).content.decode()
    assert "100%" in html and 'data-live="0"' in html
    assert "<html" not in html  # a fragment, not a page


# Composition page ---------------------------------------------------------------------------------


def test_the_composition_page_shows_the_tree(superuser_client, tree):
    pipe = tree["pipeline"]
    response = superuser_client.get(url("django_actors_composition_change", pipe.pk))
    assert response.status_code == 200
    html = response.content.decode()
    # Pipeline steps in order: the fetch message, the nested group, then the step not started.
    fetch, nested, pending = html.index(">fetch</a>"), html.index(">split</a>"), html.index("not started")
    assert fetch < nested < pending
    # The group's members with their status, result and traceback.
    assert html.count('class="da-member da-message da-member-succeeded"') == 3
    assert "da-member-failed" in html and "ValueError: split exploded" in html
    assert "&rarr; <code>&#x27;page&#x27;</code>" in html  # the result preview, escaped
    assert "1.0 s" in html  # the fetch step's duration
    assert url("django_actors_composition_tree", pipe.pk) in html  # it refreshes itself
    assert url("django_actors_composition_retry", pipe.pk) in html
    assert url("django_actors_composition_cancel", pipe.pk) in html
    assert "Cancel marks the composition" in html


def test_a_nested_composition_page_links_to_its_parent(superuser_client, tree):
    inner = tree["inner"]
    html = superuser_client.get(url("django_actors_composition_change", inner.pk)).content.decode()
    assert url("django_actors_composition_change", tree["pipeline"].pk) in html
    assert ">split</a>" in html and "fetch" not in html.split('class="da-tree"')[1]


def test_the_tree_fragment_reports_whether_it_is_still_live(superuser_client, tree):
    html = superuser_client.get(url("django_actors_composition_tree", tree["running"].pk)).content.decode()
    assert 'data-da-live="1"' in html and "<html" not in html
    html = superuser_client.get(url("django_actors_composition_tree", tree["pipeline"].pk)).content.decode()
    assert 'data-da-live="0"' in html


def test_an_unknown_composition_is_a_404(superuser_client, db):
    assert superuser_client.get(url("django_actors_composition_change", "missing")).status_code == 404
    assert superuser_client.get(url("django_actors_composition_tree", "missing")).status_code == 404


def test_a_large_group_shows_its_failures_first_and_links_to_the_rest(superuser_client):
    big = composition("big", total=150, completed=149, failed=1, status="failed")
    MessageRecord.objects.bulk_create(
        [
            MessageRecord(message_id=f"b{i}", actor_name="crunch", queue_name="q", composition=big, root_id="big",
                          position=i, status="failed" if i == 140 else "succeeded")
            for i in range(150)
        ]
    )  # fmt: skip
    html = superuser_client.get(url("django_actors_composition_change", "big")).content.decode()
    assert html.count('class="da-member da-message') == 100
    assert "da-member-failed" in html and "and 50 more members" in html


# Dashboard -----------------------------------------------------------------------------------------


def test_the_dashboard_shows_queues_workers_and_throughput(superuser_client, broker, tree):
    @django_actors.actor(queue_name="dash")
    def dash_job(x):
        return x

    for i in range(3):
        dash_job.send(i)
    dash_job.send_with_options(args=(9,), delay=60_000)
    WorkerRecord.objects.create(
        worker_id="host-a:10", hostname="host-a", pid=10, threads=8, in_flight=3, processed=120, queues="*"
    )
    WorkerRecord.objects.create(
        worker_id="host-b:11", hostname="host-b", pid=11, heartbeat=NOW - datetime.timedelta(minutes=5)
    )
    three_minutes_ago = timezone.now().replace(second=0, microsecond=0) - datetime.timedelta(minutes=3)
    MinuteStat.objects.create(minute=three_minutes_ago, succeeded=1, failed=2)
    MinuteStat.objects.create(minute=three_minutes_ago - datetime.timedelta(hours=2), succeeded=50)  # too old
    response = superuser_client.get(url("django_actors_dashboard"))
    assert response.status_code == 200
    html = response.content.decode()
    row = re.search(r"<tr><td>dash.*?</tr>", html, re.S).group(0)
    assert re.findall(r'da-num[^"]*">(\d+|-)</td>', row) == ["3", "1", "0", "0"]
    assert "host-a:10" in html and "da-status-alive\">running" in html
    assert "host-b:11" in html and "da-status-lost" in html
    assert '<svg class="da-chart"' in html and html.count('<rect class="da-chart-ok"') == 60
    assert "1 succeeded, 2 failed" in html  # the bar of that minute
    cards = re.findall(r'<span class="da-card-value">(\d+)</span>', html)
    assert cards[2:] == ["1", "2"]  # succeeded and failed in the last hour
    assert url("django_actors_dashboard_fragment") in html
    fragment = superuser_client.get(url("django_actors_dashboard_fragment"))
    assert fragment.status_code == 200 and "<html" not in fragment.content.decode()
    assert '<svg class="da-chart"' in fragment.content.decode()


def test_the_dashboard_has_an_entry_in_the_app_list(viewer, db):
    index = viewer.get(url("app_list", "django_actors")).content.decode()
    assert url("django_actors_dashboard_changelist") in index
    response = viewer.get(url("django_actors_dashboard_changelist"))
    assert response.status_code == 302 and response["Location"] == url("django_actors_dashboard")


# Messages and workers ---------------------------------------------------------------------------------


def test_the_message_list_filters_and_searches(superuser_client, tree):
    def listed(**params: str) -> set[str]:
        response = superuser_client.get(url("django_actors_messagerecord_changelist"), params)
        assert response.status_code == 200
        return set(re.findall(r'/messagerecord/([^/"]+)/change/', response.content.decode()))

    assert len(listed()) == 9
    assert listed(status="failed") == {"m-split-2"}
    assert listed(actor_name="fetch") == {"m-fetch"}
    assert listed(q="m-resize") == {f"m-resize-{i}" for i in range(5)}
    assert listed(q=tree["inner"].pk) == {"m-split-0", "m-split-1", "m-split-2"}


def test_the_message_page_shows_arguments_result_and_traceback(superuser_client, tree):
    MessageRecord.objects.filter(pk="m-split-2").update(args_preview="3, mode='fast'")
    html = superuser_client.get(url("django_actors_messagerecord_change", "m-split-2")).content.decode()
    assert "3, mode=&#x27;fast&#x27;" in html
    assert "ValueError: split exploded" in html
    assert url("django_actors_composition_change", tree["inner"].pk) in html
    assert url("django_actors_messagerecord_retry", "m-split-2") in html


def test_the_worker_list(superuser_client, db):
    WorkerRecord.objects.create(worker_id="w:1", hostname="w", pid=1, threads=4, processed=7)
    response = superuser_client.get(url("django_actors_workerrecord_changelist"))
    assert response.status_code == 200 and "w:1" in response.content.decode()


# Actions --------------------------------------------------------------------------------------------


def _failed_group(broker: Any) -> tuple[Any, str, threading.Event]:
    healed = threading.Event()

    @django_actors.actor(queue_name="admin-actions", max_retries=0)
    def mend(x):
        if x == 1 and not healed.is_set():
            raise ValueError("not yet")
        return x

    g = group([mend.message(i) for i in range(3)]).run()
    worker = Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        drain(broker, worker)
    finally:
        worker.stop()
    failed = MessageRecord.objects.get(composition_id=g.id, status="failed")
    return g, failed.pk, healed


def test_retry_from_the_composition_page(superuser_client, broker):
    g, failed, healed = _failed_group(broker)
    healed.set()
    response = superuser_client.post(url("django_actors_composition_retry", g.id), follow=True)
    assert response.status_code == 200
    html = response.content.decode()
    assert "1 failed message was put back on its queue." in html and "1 composition was reopened." in html
    assert MessageRecord.objects.get(pk=failed).status == "enqueued"
    assert Composition.objects.get(pk=g.id).status == "running"
    assert [m.message_id for m in broker.dead_letters] == []
    worker = Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        assert g.get_results(block=True, timeout=10_000) == [0, 1, 2]
        drain(broker, worker)
    finally:
        worker.stop()
    assert MessageRecord.objects.get(pk=failed).status == "succeeded"


def test_retry_action_on_the_message_list(superuser_client, broker):
    g, failed, _ = _failed_group(broker)
    ok = MessageRecord.objects.filter(composition_id=g.id, status="succeeded").values_list("pk", flat=True)[0]
    response = superuser_client.post(
        url("django_actors_messagerecord_changelist"),
        {"action": "retry_selected", "_selected_action": [failed, ok]},
        follow=True,
    )
    assert "1 failed message was put back on its queue." in response.content.decode()
    assert MessageRecord.objects.get(pk=failed).status == "enqueued"
    assert broker.dead_letters == []


def test_retry_action_on_the_composition_list_reports_missing_dead_letters(superuser_client, broker):
    g, failed, _ = _failed_group(broker)
    broker.purge_dead_letters()
    response = superuser_client.post(
        url("django_actors_composition_changelist"), {"action": "retry_failed", "_selected_action": [g.id]}, follow=True
    )
    assert "no longer in the broker&#x27;s dead letters" in response.content.decode()
    assert MessageRecord.objects.get(pk=failed).status == "failed"


def test_cancel_from_the_composition_page_and_the_list(superuser_client, broker):
    @django_actors.actor(queue_name="admin-cancel")
    def later(x):
        return x

    first = group([later.message(i) for i in range(2)]).run(delay=60_000)
    second = group([later.message(i) for i in range(2)]).run(delay=60_000)
    recorder_of(broker).flush()
    response = superuser_client.post(url("django_actors_composition_cancel", first.id), follow=True)
    assert "1 composition was cancelled." in response.content.decode()
    assert first.cancelled and Composition.objects.get(pk=first.id).status == "cancelled"
    response = superuser_client.post(
        url("django_actors_composition_changelist"),
        {"action": "cancel_compositions", "_selected_action": [first.id, second.id]},
        follow=True,
    )
    html = response.content.decode()
    assert "1 composition was cancelled." in html and "1 composition had already finished." in html
    assert second.cancelled


def test_cancelling_a_composition_the_backend_forgot_says_so(superuser_client, broker):
    composition("gone-from-backend", status="running")
    response = superuser_client.post(url("django_actors_composition_cancel", "gone-from-backend"), follow=True)
    assert "no longer in the results backend" in response.content.decode()


# Permissions and safety -----------------------------------------------------------------------------------


def _pages(tree: dict[str, Any]) -> list[str]:
    pk = tree["pipeline"].pk
    return [
        url("django_actors_composition_changelist"),
        url("django_actors_composition_change", pk),
        url("django_actors_composition_tree", pk),
        url("django_actors_composition_progress") + f"?id={pk}",
        url("django_actors_dashboard"),
        url("django_actors_dashboard_fragment"),
        url("django_actors_messagerecord_changelist"),
        url("django_actors_messagerecord_change", "m-split-2"),
        url("django_actors_workerrecord_changelist"),
    ]


def test_anonymous_and_non_staff_users_see_nothing(client, tree):
    User.objects.create_user("plain", password="pw")
    plain = Client()
    plain.force_login(User.objects.get(username="plain"))
    for visitor in (client, plain):
        for page in _pages(tree):
            response = visitor.get(page)
            assert response.status_code == 302 and "/login/" in response["Location"], page
        response = visitor.post(url("django_actors_composition_retry", tree["pipeline"].pk))
        assert response.status_code == 302 and "/login/" in response["Location"]


def test_staff_without_permissions_are_refused(tree):
    nobody = staff_with()
    for page in _pages(tree):
        assert nobody.get(page).status_code == 403, page


def test_a_view_only_user_sees_everything_but_cannot_retry_or_cancel(viewer, broker, tree):
    for page in _pages(tree):
        assert viewer.get(page).status_code == 200, page
    detail = viewer.get(url("django_actors_composition_change", tree["pipeline"].pk)).content.decode()
    assert url("django_actors_composition_retry", tree["pipeline"].pk) not in detail
    listing = viewer.get(url("django_actors_composition_changelist")).content.decode()
    assert "retry_failed" not in listing and "cancel_compositions" not in listing
    pk = tree["pipeline"].pk
    assert viewer.post(url("django_actors_composition_retry", pk)).status_code == 403
    assert viewer.post(url("django_actors_composition_cancel", tree["running"].pk)).status_code == 403
    assert viewer.post(url("django_actors_messagerecord_retry", "m-split-2")).status_code == 403
    response = viewer.post(
        url("django_actors_messagerecord_changelist"), {"action": "retry_selected", "_selected_action": ["m-split-2"]}
    )
    assert response.status_code in (200, 302, 403)
    assert MessageRecord.objects.get(pk="m-split-2").status == "failed"
    assert Composition.objects.get(pk=tree["running"].pk).status == "running"


def test_a_user_with_change_permission_can_retry(broker):
    editor = staff_with("view_composition", "change_composition", "view_messagerecord", "change_messagerecord")
    g, failed, _ = _failed_group(broker)
    assert editor.post(url("django_actors_composition_retry", g.id)).status_code == 302
    assert MessageRecord.objects.get(pk=failed).status == "enqueued"


def test_actions_need_a_csrf_token(broker, tree):
    user = User.objects.create_superuser("csrf", "c@example.com", "pw")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    assert strict.post(url("django_actors_composition_retry", tree["pipeline"].pk)).status_code == 403
    assert strict.post(url("django_actors_composition_cancel", tree["running"].pk)).status_code == 403
    assert strict.post(url("django_actors_messagerecord_retry", "m-split-2")).status_code == 403
    assert Composition.objects.get(pk=tree["running"].pk).status == "running"


def test_retry_and_cancel_only_accept_post(superuser_client, tree):
    assert superuser_client.get(url("django_actors_composition_retry", tree["pipeline"].pk)).status_code == 405
    assert superuser_client.get(url("django_actors_composition_cancel", tree["running"].pk)).status_code == 405
    assert superuser_client.get(url("django_actors_messagerecord_retry", "m-split-2")).status_code == 405


def test_user_data_is_escaped_everywhere(superuser_client, broker):
    @django_actors.actor(queue_name="admin-xss", max_retries=0)
    def hostile(text):
        raise ValueError(text)

    evil = "<script>alert('x')</script>"
    g = group([hostile.message(evil)]).run()
    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        drain(broker, worker)
    finally:
        worker.stop()
    record = MessageRecord.objects.get(composition_id=g.id)
    Composition.objects.filter(pk=g.id).update(name=evil)
    pages = [
        url("django_actors_composition_changelist"),
        url("django_actors_composition_change", g.id),
        url("django_actors_composition_tree", g.id),
        url("django_actors_messagerecord_changelist"),
        url("django_actors_messagerecord_change", record.pk),
        url("django_actors_dashboard"),
    ]
    for page in pages:
        html = superuser_client.get(page).content.decode()
        assert "<script>alert(" not in html, page
    detail = superuser_client.get(url("django_actors_messagerecord_change", record.pk)).content.decode()
    assert "&lt;script&gt;alert(" in detail


def test_previews_are_truncated_in_the_pages(superuser_client, broker):
    @django_actors.actor(queue_name="admin-long")
    def long_job(text):
        return text * 2

    sent = long_job.send("y" * 5000)
    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        drain(broker, worker)
    finally:
        worker.stop()
    html = superuser_client.get(url("django_actors_messagerecord_change", sent.message_id)).content.decode()
    assert "y" * 300 not in html and "y" * 199 in html


@pytest.mark.redis
def test_the_dashboard_asks_the_redis_broker_for_its_queue_counts(superuser_client, redis_url):
    from django_actors import broker as broker_module
    from django_actors.brokers.redis import RedisBroker
    from django_actors.results.backends.redis import RedisBackend

    previous = broker_module._broker
    redis_broker = make_broker(broker_cls=RedisBroker, backend=RedisBackend(url=redis_url), url=redis_url)
    set_broker(redis_broker)
    try:

        @django_actors.actor(queue_name="dash-redis")
        def redis_job(x):
            return x

        for i in range(4):
            redis_job.send(i)
        redis_job.send_with_options(args=(9,), delay=60_000)
        html = superuser_client.get(url("django_actors_dashboard")).content.decode()
        row = re.search(r"<tr><td>dash-redis.*?</tr>", html, re.S).group(0)
        assert re.findall(r'da-num[^"]*">(\d+|-)</td>', row) == ["4", "1", "0", "0"]
    finally:
        redis_broker.emit_before("process_stop")
        redis_broker.close()
        broker_module._broker = previous


def test_a_failed_group_with_members_still_running_keeps_refreshing(superuser_client):
    group_row = composition("half", total=4, completed=1, failed=1, status="failed", status_rank=2)
    message("h0", composition=group_row, root_id="half", position=0, status="succeeded")
    message("h1", composition=group_row, root_id="half", position=1, status="failed")
    message("h2", composition=group_row, root_id="half", position=2, status="started")
    message("h3", composition=group_row, root_id="half", position=3, status="enqueued")
    tree_html = superuser_client.get(url("django_actors_composition_tree", "half")).content.decode()
    assert 'data-da-live="1"' in tree_html
    bar = _bar(superuser_client.get(url("django_actors_composition_changelist")).content.decode(), "half")
    assert 'data-live="1"' in bar
    Composition.objects.filter(pk="half").update(completed=3)
    MessageRecord.objects.filter(pk__in=["h2", "h3"]).update(status="succeeded")
    tree_html = superuser_client.get(url("django_actors_composition_tree", "half")).content.decode()
    assert 'data-da-live="0"' in tree_html
