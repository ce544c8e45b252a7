"""``manage.py reconcile [--apply] [--json] [--check] [--category NAME ...]``

Read-only report by default (see taskengine/ops/reconcile/). ``--apply`` makes the explicit
fixes (compare-and-set writes with audit rows, actor ``system:reconcile``); the report
printed is the one read *before* applying, plus what this run changed under
``applied``. ``--check`` exits 1 when the report found anything (for cron and CI);
``--apply`` with the migration gate closed exits 2. Progress goes to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from taskengine.ops import reconcile
from taskengine.ops.reconcile.progress import Progress


class Command(BaseCommand):
    requires_system_checks: list[str] = []  # report the gate ourselves, even when checks fail
    help = "Report (and with --apply, fix) inconsistencies in the task engine's tables."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--apply", action="store_true", help="Make the fixes each finding names.")
        parser.add_argument("--json", action="store_true", help="Print a machine-readable report.")
        parser.add_argument("--check", action="store_true", help="Exit 1 when anything is found.")
        parser.add_argument(
            "--category",
            action="append",
            choices=reconcile.CATEGORIES,
            help="Only this category (repeatable). Default: all.",
        )
        parser.add_argument("--batch-size", type=int, default=500, help="Rows per fix transaction.")
        parser.add_argument("--database", default="default")
        parser.add_argument("--no-progress", action="store_true", help="No progress output on stderr.")

    def handle(self, *args: Any, **options: Any) -> None:
        progress = Progress(
            self.stderr._out,  # type: ignore[arg-type]  # the stream (a callable in django-stubs)
            enabled=not options["no_progress"],
            min_interval=0,
        )
        database, categories = options["database"], options["category"]
        result = reconcile.report(database, categories=categories, progress=progress.message)
        exit_code = 1 if options["check"] and result.found else 0
        if options["apply"]:
            try:
                result.applied = reconcile.apply(
                    database, categories=categories, progress=progress.message, batch_size=options["batch_size"]
                )
            except reconcile.GateClosed as exc:
                self.stderr.write(f"reconcile: not applying, migration gate closed: {exc}")
                exit_code = 2
        if options["json"]:
            self.stdout.write(json.dumps(result.as_dict(), indent=2, default=str))
        else:
            self._print_text(result)
        if exit_code:
            sys.exit(exit_code)

    def _print_text(self, result: reconcile.Report) -> None:
        gate = result.gate
        self.stdout.write(f"migration gate: {'open' if gate['ready'] else 'CLOSED - ' + gate.get('reason', '')}")
        leader = result.leader
        self.stdout.write(
            "leader: none"
            if leader is None
            else f"leader: {leader['holder']} term {leader['term']} until {leader['expires_at']}"
            + (" (EXPIRED)" if leader["expired"] else "")
        )
        alive = sum(1 for w in result.workers if w["alive"])
        self.stdout.write(f"workers: {alive} alive, {len(result.workers) - alive} not alive (not stopped)")
        for f in result.findings:
            mark = "ok " if f.count == 0 else "!! "
            self.stdout.write(
                f"{mark}{f.category}: {f.count}"
                + (f"  sample: {' '.join(map(str, f.sample_ids))}" if f.sample_ids else "")
            )
            if f.count:
                self.stdout.write(f"     --apply: {f.action}")
        for a in result.applied or []:
            self.stdout.write(f"applied {a.category}: {a.fixed} fixed")
        if not result.found:
            self.stdout.write("nothing to reconcile")
