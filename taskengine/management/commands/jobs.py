"""``manage.py jobs requeue|retry|cancel [filter] [--dry-run] | resume ID | show ID | list``

Bulk actions on the job list's filter (docs/bulk.md): ``--state``, ``--queue``,
``--task PATH``, ``--tenant``, ``--since ISO`` / ``--until ISO`` (a date, inclusive, or an
ISO 8601 date and time). ``--dry-run`` prints the exact number of jobs the action would
change and changes nothing. Otherwise the command stores a bulk operation (its own audit
row), applies it in batches (``--batch-size``, one transaction each, one audit row per
job changed) and prints its progress on stderr and a summary on stdout.

The actor is ``cli:<os user>`` (every tenant), or with ``--as-user USERNAME`` that user:
their permission for the action and their tenants are checked on every batch, and the
audit rows name them. Killed half-way, the same command run again resumes the
unfinished operation of the same action, filter and actor (``--new`` starts another);
``resume ID`` resumes any. ``show ID`` prints an operation as JSON, ``list`` the recent
ones; ``cancel-bulk ID`` stops one.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from taskengine.conf import engine_settings
from taskengine.models import BulkOperation
from taskengine.ops import bulk, bulk_batches
from taskengine.ops.operations import OperationError
from taskengine.ops.queue_control import cli_actor
from taskengine.ops.reconcile.progress import Progress


class Command(BaseCommand):
    help = "Requeue, retry now or cancel every job matching a filter, in resumable batches."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default=None, help="Database alias (default: TASKENGINE DATABASE).")
        sub = parser.add_subparsers(dest="command", required=True)
        for action, text in (
            ("requeue", "Requeue failed or cancelled jobs (one more attempt each)."),
            ("retry", "Make queued jobs waiting for a later run time due now."),
            ("cancel", "Cancel queued jobs; ask running ones to stop."),
        ):
            p = sub.add_parser(action, help=text)
            p.add_argument("--state", default="", help="Job state (queued, running, succeeded, failed, cancelled).")
            p.add_argument("--queue", default="")
            p.add_argument("--task", default="", help="Exact task path.")
            p.add_argument("--tenant", default="")
            p.add_argument("--since", default="", help="Enqueued on or after: YYYY-MM-DD or ISO date and time.")
            p.add_argument("--until", default="", help="Enqueued on or before: YYYY-MM-DD or ISO date and time.")
            p.add_argument("--reason", default="", help="Why (kept on the operation and in every audit row).")
            p.add_argument("--dry-run", action="store_true", help="Print the exact count; change nothing.")
            p.add_argument("--as-user", default="", help="Act as this user (their permission and tenants).")
            p.add_argument("--batch-size", type=int, default=bulk.DEFAULT_BATCH_SIZE)
            p.add_argument("--pause", type=float, default=0.0, help="Seconds to wait between batches (throttle).")
            p.add_argument("--new", action="store_true", help="Do not resume an unfinished identical operation.")
            p.add_argument("--no-progress", action="store_true")
        resume = sub.add_parser("resume", help="Finish an unfinished bulk operation.")
        resume.add_argument("id", type=int)
        resume.add_argument("--pause", type=float, default=0.0)
        resume.add_argument("--no-progress", action="store_true")
        show = sub.add_parser("show", help="Print a bulk operation as JSON.")
        show.add_argument("id", type=int)
        sub.add_parser("list", help="The 50 newest bulk operations.")
        stop = sub.add_parser("cancel-bulk", help="Stop an unfinished bulk operation (changes so far stay).")
        stop.add_argument("id", type=int)

    def handle(self, *args: Any, **options: Any) -> None:
        database = options["database"] or engine_settings.DATABASE
        command = options["command"]
        try:
            if command in bulk.ACTIONS:
                self.bulk(command, database, options)
            elif command == "resume":
                self.apply(self.get(options["id"], database), database, options)
            elif command == "show":
                self.stdout.write(json.dumps(bulk.as_dict(self.get(options["id"], database)), indent=2))
            elif command == "cancel-bulk":
                op = bulk.cancel(options["id"], actor=cli_actor(), using=database)
                self.stdout.write(f"Bulk operation {op.pk} cancelled after {op.changed} of {op.matched} jobs.")
            else:
                for op in BulkOperation.objects.using(database).order_by("-pk")[:50]:
                    self.stdout.write(
                        f"{op.pk}\t{op.action}\t{op.state}\t{op.changed}/{op.matched}\t{op.actor_repr}\t{op.filter}"
                    )
        except OperationError as exc:
            raise CommandError(exc.message) from exc

    def get(self, op_id: int, database: str) -> BulkOperation:
        op = BulkOperation.objects.using(database).filter(pk=op_id).first()
        if op is None:
            raise CommandError(f"no bulk operation {op_id}")
        return op

    def actor(self, username: str, database: str) -> bulk.BulkActor:
        if not username:
            return cli_actor()
        user = get_user_model()._default_manager.db_manager(database).filter(username=username).first()
        if user is None:
            raise CommandError(f"no user {username!r}")
        return user

    def bulk(self, action: str, database: str, options: dict[str, Any]) -> None:
        actor = self.actor(options["as_user"], database)
        filter_data = {name: options[name] for name in bulk.FILTER_FIELDS if options[name]}
        if options["dry_run"]:
            found = bulk.preview(action, filter_data, actor=actor, using=database)
            self.stdout.write(f"{found.count} job(s) would be changed by {action} (dry run: nothing changed).")
            return
        op = None if options["new"] else bulk.find_unfinished(action, filter_data, actor=actor, using=database)
        if op is not None:
            self.stderr.write(f"Resuming unfinished bulk operation {op.pk} ({op.changed} of {op.matched} done).")
        else:
            op = bulk.create(
                action,
                filter_data,
                actor=actor,
                reason=options["reason"],
                batch_size=options["batch_size"],
                using=database,
                runner=runner(),
            )
            self.stderr.write(f"Bulk operation {op.pk}: {action} of {op.matched} job(s).")
        self.apply(op, database, options)

    def apply(self, op: BulkOperation, database: str, options: dict[str, Any]) -> None:
        bar = Progress(
            self.stderr._out,  # type: ignore[arg-type]  # the stream (a callable in django-stubs)
            enabled=not options["no_progress"],
        )
        op = bulk_batches.run(
            op.pk,
            using=database,
            pause=options["pause"],
            runner=runner(),
            progress=lambda o: bar.bar(f"bulk {o.pk} {o.action}", o.changed + o.skipped, o.matched),
        )
        self.stdout.write(
            f"Bulk operation {op.pk} {op.state}: {op.changed} changed, {op.skipped} skipped of {op.matched} matched."
        )
        if op.state == "failed":
            raise CommandError(f"bulk operation {op.pk} failed: {op.error}")


def runner() -> str:
    """This process, as the runner of the operations it applies."""
    return f"cli:{socket.gethostname()}:{os.getpid()}"
