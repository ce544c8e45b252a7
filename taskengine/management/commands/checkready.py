"""manage.py checkready — exit 0 when the schema is at the migration head, 1 (with the reason) if not.

For container entrypoints that must not start half-way against an old schema::

    manage.py checkready --wait 60 && exec gunicorn project.wsgi

Reads only ``django_migrations`` (through the gate); runs no system checks so it stays fast.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from taskengine import gate
from taskengine.conf import engine_settings


class Command(BaseCommand):
    help = "Exit 0 if the database is at the head of the code's migrations, else 1 with the reason."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default=None, help="Database alias (default: TASKENGINE DATABASE).")
        parser.add_argument(
            "--wait",
            type=float,
            default=0.0,
            help="Wait up to this many seconds for the gate to open (default: 0, check once).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["database"] or engine_settings.DATABASE
        if options["wait"] > 0:
            gate.wait_until_ready(alias, timeout=options["wait"])
        status = gate.status(alias)
        if not status.ready:
            raise CommandError(f"not ready: {status.reason}")
        self.stdout.write(f"ready: database {alias!r} is at the head of the migrations")
