"""``manage.py prune_actors``: delete finished and expired rows of the
database broker and results backend, by age.

    python manage.py prune_actors --older-than 86400      # finished over a day ago
    python manage.py prune_actors --older-than 3600 --keep-dead-letters

Deletes acked messages kept for retention ("done") and dead letters that
finished more than ``--older-than`` seconds ago, heartbeats of workers gone
for long, and expired results and result sets. Queued and claimed messages
are never touched. Run it from cron, or rely on the opportunistic pruning
that workers and result stores do (retention / ``dead_message_ttl`` / TTLs).
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds.") from None
    if seconds < 0 or seconds != seconds:
        raise argparse.ArgumentTypeError(f"--older-than must be a non-negative number of seconds, not {value!r}.")
    return seconds


def _default_database() -> str:
    """The alias of the configured database broker, else ``default``."""
    from ...conf import get_settings

    options = get_settings().broker.options
    using = options.get("using") if isinstance(options, dict) else None
    return using if isinstance(using, str) and using else DEFAULT_DB_ALIAS


class Command(BaseCommand):
    help = "Delete finished messages, dead letters and expired results older than --older-than seconds."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--older-than",
            type=_seconds,
            required=True,
            metavar="SECONDS",
            help="Delete done messages and dead letters that finished more than this many seconds ago.",
        )
        parser.add_argument(
            "--database",
            default=None,
            help="The database alias holding the tables (default: the database broker's, else 'default').",
        )
        parser.add_argument("--keep-dead-letters", action="store_true", help="Do not delete dead letters.")

    def handle(self, *args: Any, **options: Any) -> None:
        from ...brokers.database import DatabaseBroker
        from ...results.backends.database import DatabaseBackend

        using = options["database"] or _default_database()
        if using not in connections:
            raise CommandError(f"Unknown database alias {using!r}.")
        older_than = int(options["older_than"] * 1000)
        broker = DatabaseBroker(middleware=[], using=using)
        messages = broker.prune(older_than=older_than, dead_letters=not options["keep_dead_letters"])
        results = DatabaseBackend(using=using).prune()
        if options["verbosity"] >= 1:
            self.stdout.write(
                f"Deleted {messages['done']} done message(s), {messages['dead']} dead letter(s), "
                f"{messages['workers']} stale worker heartbeat(s), {results['results']} expired result(s) "
                f"and {results['sets']} expired result set(s) from database {using!r}."
            )
