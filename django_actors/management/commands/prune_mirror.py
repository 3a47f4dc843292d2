"""``manage.py prune_mirror``: delete old rows of the admin mirror, by age.

    python manage.py prune_mirror                       # older than DJANGO_ACTORS['MIRROR']['RETENTION']
    python manage.py prune_mirror --older-than 86400    # not updated for a day

A pipeline or group goes with its whole tree once none of it has changed for
that long; standalone messages and stopped or lost workers go by their own
age. The mirror is a read model: this never touches the broker or the
results backend. Workers also prune about once an hour on their own
(:mod:`django_actors.mirror`); ``prune_actors`` prunes the database broker.
"""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import connections


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds.") from None
    if seconds < 0 or seconds != seconds:
        raise argparse.ArgumentTypeError(f"--older-than must be a non-negative number of seconds, not {value!r}.")
    return seconds


class Command(BaseCommand):
    help = "Delete admin mirror rows (compositions, messages, workers) not updated for --older-than seconds."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--older-than",
            type=_seconds,
            default=None,
            metavar="SECONDS",
            help="Delete rows not updated for this many seconds (default: the MIRROR RETENTION setting).",
        )
        parser.add_argument(
            "--database",
            default=None,
            help="The database alias holding the mirror tables (default: the router's choice).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from ...conf import get_settings
        from ...mirror import prune

        using = options["database"]
        if using is not None and using not in connections:
            raise CommandError(f"Unknown database alias {using!r}.")
        seconds = options["older_than"]
        if seconds is None:
            seconds = get_settings().mirror.retention / 1000
        deleted = prune(datetime.timedelta(seconds=seconds), using=using)
        if options["verbosity"] >= 1:
            self.stdout.write(
                f"Deleted {deleted['compositions']} composition(s), {deleted['messages']} message(s) "
                f"and {deleted['workers']} worker(s) not updated for {seconds:g} s."
            )
