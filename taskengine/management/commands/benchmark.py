"""manage.py benchmark — measure taskengine on the configured database. See
docs/performance.md for the method and figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from taskengine.bench import Benchmark
from taskengine.conf import engine_settings


class Command(BaseCommand):
    help = "Benchmark enqueue, drain and latency; compare drain with the raw SQL limit of this machine."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--jobs", type=int, default=20_000, help="Jobs to enqueue in bulk and drain.")
        parser.add_argument("--workers", type=int, default=2, help="runworker processes for the drain.")
        parser.add_argument("--concurrency", type=int, default=32, help="--concurrency of each worker.")
        parser.add_argument("--single", type=int, default=3_000, help="Jobs enqueued one at a time.")
        parser.add_argument("--latency-samples", type=int, default=200)
        parser.add_argument("--raw-seconds", type=int, default=15, help="Duration of the raw pgbench limit.")
        parser.add_argument(
            "--raw-script",
            type=Path,
            default=None,
            help="pgbench script for the raw limit (default: taskengine/bench/raw_claim.pgbench.sql, "
            "shipped with the package).",
        )
        parser.add_argument(
            "--claim-scaling",
            action="store_true",
            help="Also time one claim at 10k, 100k and 1M queued rows (Postgres).",
        )
        parser.add_argument("--skip", default="", help="Comma list of phases to skip: single,bulk,drain,latency,raw.")
        parser.add_argument("--queue", default="benchmark")
        parser.add_argument("--database", default=None)
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")

    def handle(self, *args: Any, **o: Any) -> None:
        skip = {s.strip() for s in o["skip"].split(",") if s.strip()}
        if o["raw_script"] is not None and not o["raw_script"].is_file():
            raise CommandError(f"--raw-script {o['raw_script']} does not exist (or is not a file)")
        database = o["database"] or engine_settings.DATABASE
        bench = Benchmark(database=database, queue=o["queue"], log=self._note)
        if bench.connection.vendor != "postgresql":
            self._note("note: not PostgreSQL — no LISTEN/NOTIFY and no raw limit; figures are for SQLite")
        figures: dict[str, Any] = {  # the JSON report: mixed figures
            "database": bench.connection.vendor,
            "jobs": o["jobs"],
            "workers": o["workers"],
            "concurrency": o["concurrency"],
        }
        bench.clear()
        try:
            if "single" not in skip:
                self._note(f"enqueue: {o['single']} jobs one at a time")
                figures["enqueue_single_per_s"] = bench.enqueue_single(o["single"])
                bench.clear()
                if "raw" not in skip:
                    seconds = min(o["raw_seconds"], 5)
                    self._note(f"raw single insert: pgbench, one job per transaction, {seconds}s")
                    raw_single = bench.raw_single_insert(seconds)
                    figures["raw_single_insert_per_s"] = raw_single
                    if raw_single:
                        figures["enqueue_single_vs_raw"] = figures["enqueue_single_per_s"] / raw_single
                    bench.clear()
            if "bulk" not in skip:
                self._note(f"enqueue: {o['jobs']} jobs in bulk")
                figures["enqueue_bulk_per_s"] = bench.enqueue_bulk(o["jobs"])
                bench.clear()
            if "drain" not in skip:
                self._note(f"drain: {o['workers']} workers x concurrency {o['concurrency']}, {o['jobs']} jobs")
                figures.update(bench.drain(o["workers"], o["concurrency"], o["jobs"]))
            bench.clear()
            if "latency" not in skip:
                self._note(f"latency: {o['latency_samples']} jobs to an idle worker")
                figures.update(bench.latency(o["latency_samples"]))
                bench.clear()
            if o["claim_scaling"]:
                self._note("claim time at 10k, 100k and 1M queued rows")
                figures.update(bench.claim_scaling([10_000, 100_000, 1_000_000]))
            if "raw" not in skip:
                script = o["raw_script"] or "taskengine/bench/raw_claim.pgbench.sql"
                self._note(f"raw SQL limit: pgbench running {script}, 2 clients, {o['raw_seconds']}s")
                raw = bench.raw_limit(o["raw_seconds"], o["raw_script"])
                figures["raw_claim_limit_per_s"] = raw
                if raw and figures.get("drain_per_s"):
                    figures["drain_vs_raw"] = figures["drain_per_s"] / raw
        except Exception as exc:
            raise CommandError(f"benchmark failed: {exc}") from exc
        finally:
            bench.clear()
        rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
        if o["json"]:
            self.stdout.write(json.dumps(rounded))
        else:
            for key, value in rounded.items():
                self.stdout.write(f"{key:28} {value}")

    def _note(self, message: str) -> None:
        self.stderr.write(f"[benchmark] {message}")
