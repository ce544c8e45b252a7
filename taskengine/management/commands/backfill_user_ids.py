"""``manage.py backfill_user_ids [--batch-size N] [--dry-run] [--max-batches N] [--pause S]``

Fill task_execution_logs.user_id_str from user_id in bounded batches by primary key
(see taskengine/ops/backfill.py). Safe to interrupt (Ctrl-C, kill) and rerun: each batch
commits on its own, and each row is written at most once (compare-and-set on
user_id_str IS NULL). Progress goes to stderr; the summary to stdout."""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from taskengine import gate
from taskengine.ops import backfill
from taskengine.ops.reconcile.progress import Progress


class Command(BaseCommand):
    requires_system_checks: list[str] = []  # report the gate ourselves, even when checks fail
    help = "Backfill task_execution_logs.user_id_str from user_id in resumable batches."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            type=int,
            default=backfill.DEFAULT_BATCH_SIZE,
            help="Rows per batch (one short transaction each). Default %(default)s.",
        )
        parser.add_argument("--dry-run", action="store_true", help="Count what would be written; write nothing.")
        parser.add_argument(
            "--max-batches", type=int, default=None, help="Stop after this many batches (a rerun resumes)."
        )
        parser.add_argument(
            "--pause", type=float, default=0.0, help="Seconds to sleep between batches, to spare a busy primary."
        )
        parser.add_argument("--database", default="default")
        parser.add_argument("--json", action="store_true", help="Print the summary as JSON.")
        parser.add_argument("--no-progress", action="store_true", help="No progress output on stderr.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        state = gate.status(options["database"])
        if not state.ready:
            raise CommandError(f"migration gate closed: {state.reason}")
        progress = Progress(
            self.stderr._out,  # type: ignore[arg-type]  # the stream (a callable in django-stubs)
            enabled=not options["no_progress"],
        )
        label = "would fill" if options["dry_run"] else "filled"
        try:
            result = backfill.run(
                options["database"],
                batch_size=options["batch_size"],
                dry_run=options["dry_run"],
                max_batches=options["max_batches"],
                pause=options["pause"],
                progress=lambda done, total: progress.bar(label, done, total),
            )
        except KeyboardInterrupt:
            self.stderr.write("\nbackfill_user_ids: interrupted; committed batches are kept, rerun to resume")
            sys.exit(130)
        summary = {
            "dry_run": options["dry_run"],
            "pending_at_start": result.pending_at_start,
            "updated": result.updated,
            "would_update": result.would_update,
            "batches": result.batches,
            "complete": result.complete,
            "remaining": backfill.count_pending(options["database"]),
        }
        if options["json"]:
            self.stdout.write(json.dumps(summary))
            return
        verb = f"would write {result.would_update}" if options["dry_run"] else f"wrote {result.updated}"
        self.stdout.write(
            f"backfill_user_ids: {verb} row(s) in {result.batches} batch(es); "
            f"{summary['remaining']} row(s) still missing user_id_str"
            + ("" if result.complete else " (stopped by --max-batches; rerun to resume)")
        )
