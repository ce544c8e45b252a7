"""Time the console's pages and API with a million jobs (PostgreSQL only).

``manage.py console_perf`` creates a scratch database next to the configured one
(``<name>_console_perf``), migrates it, fills it with ``--rows`` jobs in one
``INSERT … SELECT generate_series`` (taskengine/bench/console_perf.sql), ANALYZEs it, then
renders every console page, API endpoint and admin list in-process with Django's test
client — as a superuser and as a staff user scoped to two of 50 tenants — and prints a
Markdown table of median / max milliseconds and query counts. The scratch database is
dropped at the end (``--keep`` keeps it). The configured database is never written.

The timing runs in a child process pointed at the scratch database (``--measure``), so
the parent never opens a connection to it while it is created or dropped.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.test.utils import CaptureQueriesContext

if TYPE_CHECKING:
    from django.test import Client

PAGES = [
    ("Dashboard", "/taskengine/"),
    ("Job list (newest)", "/taskengine/jobs/"),
    ("Job list, state=failed", "/taskengine/jobs/?state=failed"),
    ("Job list, queue + state", "/taskengine/jobs/?queue=emails&state=queued"),
    ("Job list, task", "/taskengine/jobs/?task=project.tasks.task_3"),
    ("Job list, deep keyset page", "/taskengine/jobs/?after={mid}"),
    ("Job detail", "/taskengine/jobs/{failed}/"),
    ("Workers", "/taskengine/workers/"),
    ("Schedules", "/taskengine/schedules/"),
    ("Audit", "/taskengine/audit/"),
    ("API summary", "/taskengine/api/v1/summary"),
    ("API jobs", "/taskengine/api/v1/jobs"),
    ("API jobs, state=failed, deep", "/taskengine/api/v1/jobs?state=failed&after={mid}"),
    ("API job detail", "/taskengine/api/v1/jobs/{failed}"),
    ("API workers", "/taskengine/api/v1/workers"),
    ("API schedules", "/taskengine/api/v1/schedules"),
    ("Admin job list", "/admin/taskengine/job/"),
    ("Admin job list, state=failed", "/admin/taskengine/job/?state__exact=failed"),
    ("Admin job list, tenant", "/admin/taskengine/job/?tenant=tenant-7"),
    ("Admin job change page", "/admin/taskengine/job/{failed}/change/"),
    ("Admin attempts", "/admin/taskengine/executionlog/"),
    ("Admin audit", "/admin/taskengine/operatoraction/"),
]


class Command(BaseCommand):
    help = "Build a scratch PostgreSQL database with N jobs and time the console pages (docs/performance.md)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rows", type=int, default=1_000_000)
        parser.add_argument("--runs", type=int, default=5, help="Timed requests per page (after one warm-up).")
        parser.add_argument("--keep", action="store_true", help="Keep the scratch database.")
        parser.add_argument("--measure", action="store_true", help="(internal) fill and time this database.")

    def handle(self, *args: Any, rows: int, runs: int, keep: bool, measure: bool, **options: Any) -> None:
        if connection.vendor != "postgresql":
            raise CommandError("console_perf needs PostgreSQL (DATABASE_URL=postgres://…)")
        if measure:
            return self.measure(rows, runs)
        db = settings.DATABASES["default"]
        scratch = f"{db['NAME']}_console_perf"
        admin_params: dict[str, Any] = dict(
            host=db.get("HOST") or "127.0.0.1",
            port=db.get("PORT") or 5432,
            user=db.get("USER") or "postgres",
            password=db.get("PASSWORD") or None,
            dbname="postgres",
            autocommit=True,
        )
        with psycopg.connect(**admin_params) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{scratch}"')
            conn.execute(f'CREATE DATABASE "{scratch}"')
        try:
            env = {
                **os.environ,
                "DATABASE_URL": self._url(admin_params, scratch),
                "DEBUG": "false",
                "TASKENGINE_LOG_LEVEL": "WARNING",
            }
            manage = Path(settings.BASE_DIR) / "manage.py"
            subprocess.run(
                [sys.executable, str(manage), "console_perf", "--measure", "--rows", str(rows), "--runs", str(runs)],
                env=env,
                check=True,
            )
        finally:
            if not keep:
                with psycopg.connect(**admin_params) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')

    @staticmethod
    def _url(params: dict[str, Any], name: str) -> str:
        password = f":{params['password']}" if params["password"] else ""
        return f"postgres://{params['user']}{password}@{params['host']}:{params['port']}/{name}"

    def measure(self, rows: int, runs: int) -> None:
        from taskengine.db.queries import package_statements

        fill = package_statements("taskengine.bench", "console_perf.sql")
        call_command("migrate", verbosity=0)
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(fill["console_perf_fill_jobs"], {"rows": rows})
            cursor.execute(fill["console_perf_fill_attempts"], {})
            cursor.execute("VACUUM ANALYZE")  # the state autovacuum keeps a live table in
        self.stderr.write(f"built {rows:,} jobs in {time.perf_counter() - started:.1f}s")
        ids = self._ids()
        clients = self._clients()
        self.stdout.write("| Page | superuser median / max ms | queries | tenant staff median / max ms | queries |")
        self.stdout.write("|---|---:|---:|---:|---:|")
        for label, url in PAGES:
            cells = [self._time(client, url.format(**ids), runs) for client in clients]
            self.stdout.write(f"| {label} | {cells[0][0]} | {cells[0][1]} | {cells[1][0]} | {cells[1][1]} |")

    def _ids(self) -> dict[str, int]:
        from taskengine.models import Job

        failed = Job.objects.failed().filter(tenant="tenant-7").order_by("-pk").values_list("pk", flat=True).first()
        top = Job.objects.order_by("-pk").values_list("pk", flat=True).first()
        assert failed is not None and top is not None  # the scratch database was just filled
        return {"failed": failed, "mid": top // 2}

    def _clients(self) -> list[Client]:
        from django.contrib.auth.models import Permission, User
        from django.test import Client

        from taskengine.models import TenantMembership

        root = User.objects.create_superuser("perf-root", password=None)
        staff = User.objects.create_user("perf-staff", password=None, is_staff=True)
        staff.user_permissions.set(Permission.objects.filter(content_type__app_label="taskengine"))
        TenantMembership.objects.bulk_create([TenantMembership(user=staff, tenant=t) for t in ("tenant-7", "tenant-8")])
        clients: list[Client] = []
        for user in (root, staff):
            client = Client()
            client.force_login(user)
            clients.append(client)
        return clients

    def _time(self, client: Client, url: str, runs: int) -> tuple[str, int]:
        response = client.get(url)  # warm-up (caches, first plan)
        if response.status_code != 200:
            return f"HTTP {response.status_code}", 0
        samples = []
        for _ in range(runs):
            with CaptureQueriesContext(connection) as captured:
                begin = time.perf_counter()
                client.get(url)
                samples.append((time.perf_counter() - begin) * 1000)
        return f"{statistics.median(samples):.0f} / {max(samples):.0f}", len(captured.captured_queries)
