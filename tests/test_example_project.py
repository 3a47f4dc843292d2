"""The example project, as its users run it: on the embedded default (the
database broker and results on SQLite), in fresh interpreters, with its
database in a temporary file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run(args: list[str], tmp_path: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env["DJANGO_ACTORS_EXAMPLE_DB"] = str(tmp_path / "example.sqlite3")
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_demo_runs_the_main_job_on_runworkers(tmp_path: Path) -> None:
    result = run(["manage.py", "demo", "--processes", "2", "--threads", "2", "--images", "20"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Order 1: done, total 37.16, emails sent: ['customer', 'warehouse']" in out
    assert "Receipt thumbnails:    ['order-1-64.png', 'order-1-256.png', 'order-1-1024.png']" in out
    assert "Catalogue thumbnails:  20" in out
    assert "2 process(es) x 2 thread(s)" in out
    assert "broker:  django_actors.brokers.database.DatabaseBroker" in out
    assert "Workers stopped cleanly." in out


def test_placing_an_order_through_the_view_runs_its_workflows_after_commit(tmp_path: Path) -> None:
    script = """
import json, os
os.environ["DJANGO_SETTINGS_MODULE"] = "example_project.settings"
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.test import Client
from django_actors import get_broker
from django_actors.testing import run_until_complete

client = Client(SERVER_NAME="localhost")
items = [{"sku": "book", "quantity": 2, "unit_cents": 1000}]
placed = client.post("/orders/", json.dumps({"email": "a@example.com", "items": items}),
                     content_type="application/json")
bad = client.post("/orders/", "not json", content_type="application/json")
queued = {q: get_broker().pending_count(q) for q in sorted(get_broker().get_declared_queues())}
run_until_complete(fail_fast=True, timeout=60_000)
status = client.get(f"/orders/{placed.json()['id']}/").json()
print(json.dumps({"placed": placed.status_code, "bad": bad.status_code, "queued": queued, "status": status}))
"""
    result = run(["-c", script], tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["placed"] == 201
    assert report["bad"] == 400
    # After the view's transaction committed: the pipeline's first step and
    # the async audit on "orders", three thumbnails on "images".
    assert report["queued"] == {"emails": 0, "images": 3, "orders": 2}
    assert report["status"] == {
        "id": 1,
        "status": "done",
        "total_cents": 2400,
        "thumbnails": ["order-1-64.png", "order-1-256.png", "order-1-1024.png"],
        "notified": ["customer", "warehouse"],
    }
