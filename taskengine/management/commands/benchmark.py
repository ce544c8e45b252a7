"""manage.py benchmark — measure taskengine on the configured database. See
docs/performance.md for the method and figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from taskengine import gate
from taskengine.bench import Benchmark, CompareRefused, require_pgqueuer
from taskengine.conf import engine_settings

PHASES = "single,bulk,drain,default,latency,raw"
SUSTAINED_SHARE = 0.7  # --sustained's default rate: this share of drain_default_per_s


def refuse_unless_migrated(database: str) -> None:
    """Before anything runs: the migration state the system checks read (taskengine.W001
    and the gate behind it). Pending migrations, or a gate closed for another reason
    (its workers would wait on it), end the command with what to do."""
    state = gate.status(database)
    if state.pending:
        raise CommandError(
            f"database {database!r} is not migrated ({len(state.pending)} migration(s) pending, "
            f"the first {state.pending[0]}): run `manage.py migrate --database {database}` before the benchmark"
        )
    if not state.ready:
        raise CommandError(f"migration gate of database {database!r} closed: {state.reason}")


class Command(BaseCommand):
    help = "Benchmark enqueue, drain and latency; compare them with the raw SQL limits of this machine."

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
        parser.add_argument(
            "--claim-limits",
            action="store_true",
            help="Also time one claim with a queue limit, a rate and keyed jobs against none (Postgres).",
        )
        parser.add_argument(
            "--compare",
            choices=["pgqueuer"],
            default=None,
            help="Also drain --jobs jobs with pgqueuer's defaults (one consumer) in a scratch database, "
            "and report the shipped worker's drains as ratios to it (PostgreSQL; pip install 'taskengine[bench]').",
        )
        self._add_mode_arguments(parser)
        parser.add_argument("--skip", default="", help=f"Comma list of phases to skip: {PHASES}.")
        parser.add_argument("--queue", default="benchmark")
        parser.add_argument("--database", default=None)
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")

    @staticmethod
    def _add_mode_arguments(parser: CommandParser) -> None:
        parser.add_argument(
            "--work",
            default="",
            help="Comma list of real-work drains: io (each job sleeps 5 ms), cpu (each spins 1 ms of CPU).",
        )
        parser.add_argument("--work-jobs", type=int, default=5_000, help="Jobs per --work drain.")
        parser.add_argument(
            "--sustained",
            type=float,
            nargs="?",
            const=300.0,
            default=None,
            metavar="SECONDS",
            help="Sustained load for SECONDS (300 if none given; PostgreSQL).",
        )
        parser.add_argument(
            "--sustained-rate",
            type=float,
            default=None,
            help=f"Jobs/s of the sustained producer (default {SUSTAINED_SHARE * 100:.0f}%% of drain_default_per_s).",
        )
        parser.add_argument("--sustained-window", type=float, default=60.0, help="Seconds per reported window.")
        parser.add_argument("--sustained-workers", type=int, default=1, help="runworker processes (defaults).")
        parser.add_argument("--long-drain", type=int, default=None, metavar="N", help="Drain N jobs queued in bulk.")
        parser.add_argument(
            "--retention", type=int, default=None, metavar="N", help="Prune N terminal jobs under claims (PostgreSQL)."
        )

    def handle(self, *args: Any, **o: Any) -> None:
        self.o = o
        self.skip = {s.strip() for s in o["skip"].split(",") if s.strip()}
        self.work = [w.strip() for w in o["work"].split(",") if w.strip()]
        if unknown := set(self.work) - {"io", "cpu"}:
            raise CommandError(f"--work takes io and cpu, not {', '.join(sorted(unknown))}")
        if o["raw_script"] is not None and not o["raw_script"].is_file():
            raise CommandError(f"--raw-script {o['raw_script']} does not exist (or is not a file)")
        if o["compare"] == "pgqueuer":
            try:
                require_pgqueuer()
            except CompareRefused as exc:
                raise CommandError(str(exc)) from None
        database = o["database"] or engine_settings.DATABASE
        refuse_unless_migrated(database)
        bench = Benchmark(database=database, queue=o["queue"], log=self._note)
        if o["compare"] and not bench.postgres:
            raise CommandError(f"--compare {o['compare']} needs PostgreSQL")
        if not bench.postgres:
            self._note("note: not PostgreSQL — no LISTEN/NOTIFY and no raw limits; figures are for SQLite")
        figures: dict[str, Any] = {
            "database": bench.connection.vendor,
            "jobs": o["jobs"],
            "workers": o["workers"],
            "concurrency": o["concurrency"],
        }
        bench.clear()
        try:
            for phase in (
                self._enqueue,
                self._drains,
                self._compare,
                self._latency,
                self._modes,
                self._sustained,
                self._raw,
            ):
                phase(bench, figures)
        except Exception as exc:
            raise CommandError(f"benchmark failed: {exc}") from exc
        finally:
            bench.clear()
        self._print(rounded(figures))

    def _enqueue(self, bench: Benchmark, figures: dict[str, Any]) -> None:
        o = self.o
        if "single" not in self.skip:
            self._note(f"enqueue: {o['single']} jobs one at a time")
            figures["enqueue_single_per_s"] = bench.enqueue_single(o["single"])
            bench.clear()
            if "raw" not in self.skip:
                seconds = min(o["raw_seconds"], 5)
                self._note(f"raw single insert: pgbench, one job per transaction, {seconds}s")
                figures["raw_single_insert_per_s"] = bench.raw_single_insert(seconds)
                figures["enqueue_single_vs_raw"] = ratio(figures, "enqueue_single_per_s", "raw_single_insert_per_s")
                bench.clear()
        if "bulk" not in self.skip:
            self._note(f"enqueue: {o['jobs']} jobs in bulk")
            figures["enqueue_bulk_per_s"] = bench.enqueue_bulk(o["jobs"])
            if "raw" not in self.skip:
                self._note(f"raw COPY: the same {o['jobs']} rows into a scratch table of the job table's shape")
                figures["raw_copy_per_s"] = bench.raw_copy()
                figures["bulk_vs_copy"] = ratio(figures, "enqueue_bulk_per_s", "raw_copy_per_s")
            bench.clear()

    def _drains(self, bench: Benchmark, figures: dict[str, Any]) -> None:
        o = self.o
        if "drain" not in self.skip:
            self._note(f"drain: {o['workers']} workers x concurrency {o['concurrency']}, {o['jobs']} jobs")
            figures.update(bench.drain(o["workers"], o["concurrency"], o["jobs"]))
            bench.clear()
        if "default" not in self.skip:
            self._note(f"drain: one runworker as shipped, then with --concurrency 32, {o['jobs']} jobs each")
            figures.update(bench.default_drains(o["jobs"]))
        for work in self.work:
            self._note(f"work {work}: {o['workers']} workers x concurrency {o['concurrency']}, {o['work_jobs']} jobs")
            figures.update(bench.work_drain(work, o["workers"], o["concurrency"], o["work_jobs"]))

    def _compare(self, bench: Benchmark, figures: dict[str, Any]) -> None:
        if self.o["compare"] != "pgqueuer":
            return
        self._note(f"pgqueuer: one consumer with its defaults, {self.o['jobs']} jobs")
        figures.update(bench.pgqueuer_drain(self.o["jobs"]))
        for drain, share in (
            ("drain_default_per_s", "drain_default_vs_pgqueuer"),
            ("drain_c32_per_s", "drain_c32_vs_pgqueuer"),
        ):
            if drain in figures:
                figures[share] = ratio(figures, drain, "pgqueuer_drain_per_s")

    def _latency(self, bench: Benchmark, figures: dict[str, Any]) -> None:
        if "latency" not in self.skip:
            self._note(f"latency: {self.o['latency_samples']} jobs to an idle worker")
            figures.update(bench.latency(self.o["latency_samples"]))
            bench.clear()
        if self.o["claim_scaling"]:
            self._note("claim time at 10k, 100k and 1M queued rows")
            figures.update(bench.claim_scaling([10_000, 100_000, 1_000_000]))
        if self.o["claim_limits"]:
            self._note("claim time with 100k queued rows: no limits, a queue limit, a rate, 1,000 keys")
            figures.update(bench.claim_limits())

    def _modes(self, bench: Benchmark, figures: dict[str, Any]) -> None:
        o = self.o
        if o["long_drain"]:
            self._note(f"long drain: {o['long_drain']} jobs, {o['workers']} workers x concurrency {o['concurrency']}")
            figures.update(bench.long_drain(o["workers"], o["concurrency"], o["long_drain"]))
        if o["retention"]:
            self._note(f"retention: {o['retention']} terminal jobs pruned while a claimer runs")
            figures.update(bench.retention(o["retention"]))

    def _sustained(self, bench: Benchmark, figures: dict[str, Any]) -> None:
        o = self.o
        if o["sustained"] is None:
            return
        if not bench.postgres:
            self._note("sustained: not available on SQLite")
            figures["sustained"] = "not available on SQLite"
            return
        rate = o["sustained_rate"]
        if rate is None:
            if "drain_default_per_s" not in figures:
                self._note(f"sustained: measuring the default worker's drain first ({o['jobs']} jobs)")
                figures["drain_default_per_s"] = bench.drain(1, None, o["jobs"], tuned=False)["drain_per_s"]
                bench.clear()
            rate = SUSTAINED_SHARE * figures["drain_default_per_s"]
        self._note(
            f"sustained: {rate:.0f} jobs/s for {o['sustained']:.0f}s into {o['sustained_workers']} default "
            f"runworker(s), windows of {o['sustained_window']:.0f}s"
        )
        figures.update(bench.sustained(o["sustained"], rate, o["sustained_workers"], o["sustained_window"]))

    def _raw(self, bench: Benchmark, figures: dict[str, Any]) -> None:
        if "raw" in self.skip:
            return
        script = self.o["raw_script"] or "taskengine/bench/raw_claim.pgbench.sql"
        self._note(f"raw SQL limit: pgbench running {script}, 2 clients, {self.o['raw_seconds']}s")
        figures["raw_claim_limit_per_s"] = bench.raw_limit(self.o["raw_seconds"], self.o["raw_script"])
        for drain, share in (
            ("drain_per_s", "drain_vs_raw"),
            ("drain_default_per_s", "drain_default_vs_raw"),
            ("drain_c32_per_s", "drain_c32_vs_raw"),
        ):
            if figures.get(drain) is not None and figures["raw_claim_limit_per_s"]:
                figures[share] = figures[drain] / figures["raw_claim_limit_per_s"]

    def _print(self, figures: dict[str, Any]) -> None:
        if self.o["json"]:
            self.stdout.write(json.dumps(figures, default=str))
            return
        for key, value in figures.items():
            if isinstance(value, list):
                self.stdout.write(key)
                for row in value:
                    self.stdout.write("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
            else:
                self.stdout.write(f"{key:32} {value}")

    def _note(self, message: str) -> None:
        self.stderr.write(f"[benchmark] {message}")


def ratio(figures: dict[str, Any], numerator: str, denominator: str) -> float | None:
    a, b = figures.get(numerator), figures.get(denominator)
    return a / b if a is not None and b else None


def rounded(value: Any) -> Any:
    """Floats to three decimals, in lists and dicts too."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value
