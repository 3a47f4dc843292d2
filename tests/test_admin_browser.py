"""The admin in a real browser: Debian's headless Chromium driven by Playwright.

A group runs while the browser watches its page: its progress bar advances
without a reload, on the composition page and on the list. Screenshots (light
and dark) go to the test's tmp dir; set ``DJANGO_ACTORS_SCREENSHOTS=1`` to
also refresh the ones in ``docs/screenshots/`` (copied there when missing).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

import django_actors
from django_actors.broker import set_broker
from django_actors.composition import group, pipeline
from django_actors.models.mirror import Composition, MessageRecord
from django_actors.worker import Worker
from tests.test_mirror import make_broker, recorder_of, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # Playwright's sync API runs an event loop in this thread; the test's own
    # ORM calls are synchronous all the same.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (scripts/test.sh does) to run the browser tests.",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def broker() -> Iterator[Any]:
    from django_actors import broker as broker_module

    previous = broker_module._broker
    stub = make_broker(flush_interval=100)
    set_broker(stub)
    yield stub
    stub.emit_before("process_stop")
    stub.close()
    broker_module._broker = previous


def log_in(context: Any, base_url: str) -> Any:
    page = context.new_page()
    page.goto(f"{base_url}/admin/login/?next=/admin/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "secret-pw")
    page.click("input[type=submit]")
    page.wait_for_url(f"{base_url}/admin/")
    return page


def save(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    target = DOCS_SCREENSHOTS / name
    if os.environ.get("DJANGO_ACTORS_SCREENSHOTS") == "1" or not target.exists():
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return path


def done_count(page: Any, selector: str) -> str:
    return str(page.inner_text(selector)).strip()


def test_a_running_group_advances_in_the_browser_without_a_reload(live_server, browser, broker, tmp_path):
    User.objects.create_superuser("admin", "admin@example.com", "secret-pw")
    gates = [threading.Event() for _ in range(8)]

    @django_actors.actor(queue_name="browser", max_retries=0)
    def render_thumbnail(index, size):
        if not gates[index].wait(60):
            raise TimeoutError("the test never released this member")
        if index == 7:
            raise ValueError(f"image {index} is corrupt")
        return {"index": index, "bytes": size * 1024}

    @django_actors.actor(queue_name="browser")
    def publish(results):
        return len(results)

    # Some history around it, for the list and the screenshots.
    warmup = pipeline([render_thumbnail.message(0, 1), publish.message()])
    gates[0].set()
    worker = Worker(broker, worker_timeout=50, worker_threads=10)
    worker.start()
    try:
        warmup.run()
        warmup.get_result(block=True, timeout=10_000)
        gates[0].clear()
        thumbnails = group([render_thumbnail.message(i, 64 * (i + 1)) for i in range(8)]).run()
        wait_for(lambda: MessageRecord.objects.filter(composition_id=thumbnails.id).count() == 8, what="members")
        wait_for(lambda: Composition.objects.filter(pk=thumbnails.id).exists(), what="the group's row")

        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = log_in(context, live_server.url)
        page.goto(f"{live_server.url}/admin/django_actors/composition/{thumbnails.id}/change/")
        summary = ".da-summary-bar .da-done-count"
        assert done_count(page, summary) == "0"
        page.evaluate("window.__not_reloaded = true")

        for index in (0, 1):
            gates[index].set()
        page.wait_for_function(f"document.querySelector('{summary}').textContent.trim() === '2'", timeout=15_000)
        for index in (2, 3, 7):
            gates[index].set()
        page.wait_for_function(
            f"document.querySelector('{summary}').textContent.trim() === '4'"
            " && document.querySelector('.da-summary-bar .da-failed-count') !== null",
            timeout=15_000,
        )
        page.wait_for_selector(".da-member-failed .da-traceback pre")
        assert "image 7 is corrupt" in page.inner_text(".da-member-failed .da-traceback pre")
        assert page.evaluate("window.__not_reloaded") is True
        save(page, tmp_path, "composition.png")

        dark = browser.new_context(viewport={"width": 1440, "height": 900}, color_scheme="dark")
        dark_page = log_in(dark, live_server.url)
        dark_page.goto(f"{live_server.url}/admin/django_actors/composition/{thumbnails.id}/change/")
        background = dark_page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background not in ("rgb(255, 255, 255)", "rgba(0, 0, 0, 0)"), background
        save(dark_page, tmp_path, "composition-dark.png")

        # The list's bar advances by itself too.
        page.goto(f"{live_server.url}/admin/django_actors/composition/")
        bar = f'.da-progress[data-composition="{thumbnails.id}"] .da-done-count'
        assert done_count(page, bar) == "4"
        page.evaluate("window.__not_reloaded = true")
        for index in (4, 5):
            gates[index].set()
        page.wait_for_function(
            f"document.querySelector('{bar}').textContent.trim() === '6'",
            timeout=15_000,
        )
        assert page.evaluate("window.__not_reloaded") is True
        save(page, tmp_path, "composition-list.png")

        gates[6].set()
        page.goto(f"{live_server.url}/admin/django_actors/composition/{thumbnails.id}/change/")
        page.evaluate("window.__not_reloaded = true")
        page.wait_for_function(
            "document.querySelector('[data-da-live]').getAttribute('data-da-live') === '0'", timeout=15_000
        )
        assert done_count(page, summary) == "7"
        assert page.evaluate("window.__not_reloaded") is True

        page.goto(f"{live_server.url}/admin/django_actors/composition/dashboard/")
        page.wait_for_selector("svg.da-chart")
        save(page, tmp_path, "dashboard.png")
        dark.close()
        context.close()
    finally:
        for gate in gates:
            gate.set()
        worker.stop(timeout=10_000)
        recorder_of(broker).flush()
