"""``manage.py backfill_report [--json | --csv]``: per table, total rows, filled,
missing, mismatched (user_id_str != user_id::text), rows without a user, and samples
of the offending ids. Read-only. Exits 0 whatever it finds (use ``reconcile --check``
to fail a job on inconsistencies)."""

from __future__ import annotations

import csv
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from taskengine import gate
from taskengine.ops import backfill


class Command(BaseCommand):
    requires_system_checks: list[str] = []  # report the gate ourselves, even when checks fail
    help = "Report how far the task_execution_logs user_id_str backfill has got."

    def add_arguments(self, parser: CommandParser) -> None:
        fmt = parser.add_mutually_exclusive_group()
        fmt.add_argument("--json", action="store_true", help="Print JSON.")
        fmt.add_argument("--csv", action="store_true", help="Print CSV (header row first).")
        parser.add_argument("--sample-size", type=int, default=10)
        parser.add_argument("--database", default="default")

    def handle(self, *args: Any, **options: Any) -> None:
        state = gate.status(options["database"])
        if not state.ready:
            raise CommandError(f"migration gate closed: {state.reason}")
        reports = backfill.report(options["database"], sample_size=options["sample_size"])
        if options["json"]:
            self.stdout.write(json.dumps({"tables": [r.as_dict() for r in reports]}, indent=2))
        elif options["csv"]:
            writer = csv.writer(self.stdout, lineterminator="\n")
            writer.writerows(backfill.csv_rows(reports))
        else:
            for r in reports:
                self.stdout.write(
                    f"{r.table}: total={r.total} filled={r.filled} missing={r.missing} "
                    f"mismatched={r.mismatched} without_user={r.without_user} "
                    f"{'clean' if r.clean else 'NOT CLEAN'}"
                )
                if r.sample_missing_ids:
                    self.stdout.write(f"  missing ids (sample): {' '.join(map(str, r.sample_missing_ids))}")
                if r.sample_mismatched_ids:
                    self.stdout.write(f"  mismatched ids (sample): {' '.join(map(str, r.sample_mismatched_ids))}")
