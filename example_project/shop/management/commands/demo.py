"""``manage.py demo``: the example project's main job, end to end.

It migrates the database, starts ``runworkers`` in a subprocess, places an
order whose fulfilment pipeline (with a group of emails inside it) and
thumbnail group run on the workers, shows their progress as bars in the
terminal, prints the results, and stops the workers with SIGTERM.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_actors import group, pipeline

from ...actors import fulfil, make_thumbnail, thumbnails
from ...models import Order

BAR_WIDTH = 30


def bar(label: str, done: int, total: int) -> str:
    """One progress bar line: ``label [#####.....] done/total``."""
    filled = BAR_WIDTH * done // total if total else BAR_WIDTH
    return f"{label:<12} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done:>4}/{total}"


class Command(BaseCommand):
    help = "Run the example project's main job end to end on the configured broker."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--processes", type=int, default=2, help="Worker processes (default 2).")
        parser.add_argument("--threads", type=int, default=4, help="Threads per worker process (default 4).")
        parser.add_argument("--images", type=int, default=200, help="Size of the big thumbnail group (default 200).")
        parser.add_argument("--timeout", type=float, default=120.0, help="Seconds to wait for the work (default 120).")

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", verbosity=0, interactive=False)
        self.stdout.write("Database migrated. Starting the workers...")
        manage = Path(settings.BASE_DIR).parent / "manage.py"
        workers = subprocess.Popen(
            [sys.executable, str(manage), "runworkers", "--processes", str(options["processes"]),
             "--threads", str(options["threads"]), "--verbosity", "0"],
        )
        try:
            self.run_job(options)
        finally:
            self.stop_workers(workers)

    def run_job(self, options: dict[str, Any]) -> None:
        order = Order.objects.create(
            email="ada@example.com",
            items=[
                {"sku": "book", "quantity": 2, "unit_cents": 1250},
                {"sku": "pen", "quantity": 3, "unit_cents": 199},
            ],
        )
        fulfilment: pipeline = fulfil(order.pk)
        receipt_thumbnails: group = thumbnails(order.pk)
        catalogue = group([make_thumbnail.message(order.pk, 32 + i) for i in range(options["images"])])
        started = time.monotonic()
        for composition in (fulfilment, receipt_thumbnails, catalogue):
            composition.run()
        self.stdout.write(
            f"Order {order.pk} placed: a {len(fulfilment)}-step pipeline (with a group of emails inside), "
            f"a {len(receipt_thumbnails)}-member group with a completion callback, "
            f"and a {len(catalogue)}-member group.\n"
        )
        rows = [("fulfilment", fulfilment), ("thumbnails", receipt_thumbnails), ("catalogue", catalogue)]
        interactive = self.stdout.isatty()
        deadline = started + options["timeout"]
        while True:
            counts = [(label, c.completed_count, len(c)) for label, c in rows]
            lines = [bar(label, done, total) for label, done, total in counts]
            finished = all(done >= total for _, done, total in counts)
            if interactive:
                self.stdout.write("\n".join(lines))
                if not finished:
                    self.stdout.write(f"\x1b[{len(lines)}A\r", ending="")
            if finished:
                if not interactive:
                    self.stdout.write("\n".join(lines))
                break
            if time.monotonic() > deadline:
                raise CommandError(f"The work did not finish within {options['timeout']:.0f} s.")
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        results = fulfilment.get_results(block=True, timeout=10_000)
        receipt_thumbnails.wait(timeout=10_000)
        names = catalogue.get_results(block=True, timeout=10_000)
        order = self.wait_for_order(order.pk)
        self.stdout.write("")
        self.stdout.write(f"Pipeline step results: {results}")
        self.stdout.write(f"Receipt thumbnails:    {order.thumbnails}")
        self.stdout.write(f"Catalogue thumbnails:  {len(names)} ({names[0]} ... {names[-1]})")
        self.stdout.write(
            f"Order {order.pk}: {order.status}, total {order.total_cents / 100:.2f}, emails sent: {order.notified}"
        )
        total = sum(len(c.messages) if isinstance(c, pipeline) else len(c) for _, c in rows)
        self.stdout.write(self.style.SUCCESS(f"Done: {total} messages in {elapsed:.1f} s."))

    def wait_for_order(self, order_id: int) -> Order:
        """The thumbnail callback runs after its group finishes: wait for it (bounded)."""
        deadline = time.monotonic() + 10
        while True:
            order = Order.objects.get(pk=order_id)
            if order.thumbnails or time.monotonic() > deadline:
                return order
            time.sleep(0.1)

    def stop_workers(self, workers: subprocess.Popen[bytes]) -> None:
        self.stdout.write("Stopping the workers (SIGTERM)...")
        workers.send_signal(signal.SIGTERM)
        try:
            code = workers.wait(timeout=60)
        except subprocess.TimeoutExpired:
            workers.kill()
            raise CommandError("The workers did not stop within 60 s.") from None
        if code != 0:
            raise CommandError(f"The workers exited with status {code}.")
        self.stdout.write("Workers stopped cleanly.")
