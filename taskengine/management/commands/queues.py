"""``manage.py queues list | pause NAME [--reason TEXT] | resume NAME | limit NAME
[--concurrency N|none] [--rate N/s|m|h|none] | sync``

``list`` prints every queue (with a row, declared in ``TASKENGINE["QUEUES"]`` or named
in ``TASKS``) with its state, queued and running jobs, and who paused it, when and why;
it only reads. ``pause`` and ``resume`` go through ``taskengine.queues`` (compare-and-set
and an audit row in one transaction; the actor is ``cli:<os user>``); a queue already
in that state exits 1 with the reason. ``limit`` sets or lifts the queue's fleet-wide
concurrency limit and its rate of starts (``taskengine.queues.set_limits``, audit row
``queue.limit``). ``sync`` applies ``TASKENGINE["QUEUES"]`` now
(workers do it when they start). See docs/queues.md.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from taskengine.conf import engine_settings
from taskengine.observability.collectors import known_queues
from taskengine.ops import queue_changes, queue_control, queue_settings
from taskengine.ops.operations import OperationError


class Command(BaseCommand):
    help = "List, pause and resume the task engine's queues."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default=None, help="Database alias (default: TASKENGINE DATABASE).")
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="Every queue: state, queued, running, paused by/at, reason.")
        listing.add_argument("--json", action="store_true", help="Print a JSON array instead of a table.")
        pause = sub.add_parser("pause", help="Stop every worker claiming from the queue (running jobs finish).")
        pause.add_argument("name")
        pause.add_argument("--reason", default="", help="Why (kept on the queue and in the audit row).")
        resume = sub.add_parser("resume", help="Let workers claim from the queue again (wakes them at once).")
        resume.add_argument("name")
        resume.add_argument("--reason", default="", help="Why (kept in the audit row).")
        limit = sub.add_parser("limit", help="Set or lift the queue's concurrency limit and rate of starts.")
        limit.add_argument("name")
        limit.add_argument(
            "--concurrency", default=None, help="At most N running jobs across all workers; 'none' lifts the limit."
        )
        limit.add_argument("--rate", default=None, help="At most N starts per second, minute or hour (100/m); 'none'.")
        limit.add_argument("--reason", default="", help="Why (kept in the audit row).")
        sub.add_parser("sync", help='Apply TASKENGINE["QUEUES"] now (workers do it when they start).')

    def handle(self, *args: Any, **options: Any) -> None:
        database = options["database"] or engine_settings.DATABASE
        action = options["action"]
        try:
            if action == "list":
                self.list(database, as_json=options["json"])
            elif action == "limit":
                if options["concurrency"] is None and options["rate"] is None:
                    raise CommandError("give --concurrency N|none, --rate N/s|m|h|none, or both")
                result = queue_control.set_limits(
                    options["name"],
                    concurrency=queue_changes.KEEP if options["concurrency"] is None else options["concurrency"],
                    rate=queue_changes.KEEP if options["rate"] is None else options["rate"],
                    actor=queue_control.cli_actor(),
                    reason=options["reason"],
                    using=database,
                )
                self.stdout.write(f"{result.message} (audit row {result.audit_id})")
            elif action == "sync":
                changed = queue_settings.sync_settings(database)
                self.stdout.write(f"applied settings to: {', '.join(changed)}" if changed else "nothing to apply")
            else:
                operate = queue_control.pause if action == "pause" else queue_control.resume
                result = operate(
                    options["name"], actor=queue_control.cli_actor(), reason=options["reason"], using=database
                )
                self.stdout.write(f"{result.message} (audit row {result.audit_id})")
        except OperationError as exc:
            raise CommandError(exc.message) from exc
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc

    def list(self, database: str, *, as_json: bool) -> None:
        rows = queue_control.statuses(database, extra=known_queues())
        if as_json:
            self.stdout.write(
                json.dumps(
                    [
                        {
                            "name": r.name,
                            "state": r.state,
                            "queued": r.queued,
                            "running": r.running,
                            "concurrency_limit": r.concurrency_limit,
                            "rate": r.rate or None,
                            "paused_by": r.paused_by or None,
                            "paused_at": r.paused_at.isoformat() if r.paused_at else None,
                            "pause_reason": r.pause_reason,
                            "declared_in_settings": r.declared,
                        }
                        for r in rows
                    ],
                    indent=2,
                )
            )
            return
        table = [("QUEUE", "STATE", "QUEUED", "RUNNING", "LIMIT", "RATE", "PAUSED BY", "PAUSED AT (UTC)", "REASON")]
        for r in rows:
            at = r.paused_at.strftime("%Y-%m-%d %H:%M:%S") if r.paused_at else "-"
            table.append(
                (
                    r.name,
                    r.state,
                    str(r.queued),
                    str(r.running),
                    str(r.concurrency_limit or "-"),
                    r.rate or "-",
                    r.paused_by or "-",
                    at,
                    r.pause_reason or "-",
                )
            )
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
        for row in table:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            self.stdout.write("  ".join([*cells, row[-1]]).rstrip())
