"""``manage.py benchmark`` end to end at a small size: every figure it promises comes out,
the drain runs real workers that are all up before the jobs exist, the raw limits come
from the project's own scripts (nothing outside the checkout), every mode (real work,
long drain, retention, sustained load, pgqueuer's drain with --compare pgqueuer) reports
its figures in --json, and the benchmark leaves none of its jobs, nor its scratch
databases or table, behind; --compare pgqueuer without the package is refused naming
the extra, and an unmigrated database naming its alias and ``migrate``. (The figures
themselves are read from the command's output in docs/performance.md, never asserted as
timings here.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from django.db import connection

from taskengine.models import ExecutionLog, Job
from tests.conftest import ROOT, subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)

ROUNDED = 0.001  # the command prints figures to three decimals: a small ratio is only that exact


def run_benchmark(*args: str) -> tuple[dict, str]:
    """The figures the command printed, and its notes (stderr)."""
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "manage.py"),
            "benchmark",
            "--jobs",
            "300",
            "--workers",
            "2",
            "--concurrency",
            "8",
            "--single",
            "50",
            "--latency-samples",
            "5",
            "--json",
            *args,
        ],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


@pytest.mark.acceptance  # the benchmark starts real runworker processes
def test_the_benchmark_reports_every_figure_and_cleans_up_after_itself():
    raw = ["--raw-seconds", "1"] if connection.vendor == "postgresql" else []
    figures, notes = run_benchmark(*raw)
    for key in (
        "enqueue_single_per_s",
        "enqueue_bulk_per_s",
        "drain_per_s",
        "latency_p50_ms",
        "latency_p95_ms",
        "worker_rss_mb_max",
        "drain_default_per_s",
        "drain_c32_per_s",
    ):
        assert figures[key] > 0, (key, figures)
    assert figures["latency_p50_ms"] <= figures["latency_p95_ms"]
    assert figures["latency_samples"] == 5
    if connection.vendor == "postgresql":
        assert figures["raw_claim_limit_per_s"] > 0
        assert figures["drain_vs_raw"] == pytest.approx(
            figures["drain_per_s"] / figures["raw_claim_limit_per_s"], rel=0.01, abs=ROUNDED
        )
        (scratch,) = re.findall(r"scratch database (taskengine_raw_claim_\d+)", notes)
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [scratch])
            assert cursor.fetchone() == (0,)
        for drain in ("drain_default", "drain_c32"):
            assert figures[f"{drain}_vs_raw"] == pytest.approx(
                figures[f"{drain}_per_s"] / figures["raw_claim_limit_per_s"], rel=0.01, abs=ROUNDED
            )
        assert figures["raw_copy_per_s"] > 0
        assert figures["bulk_vs_copy"] == pytest.approx(
            figures["enqueue_bulk_per_s"] / figures["raw_copy_per_s"], rel=0.01, abs=ROUNDED
        )
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass('taskengine_bench_copy')")
            assert cursor.fetchone() == (None,)
        assert figures["raw_single_insert_per_s"] > 0
        assert figures["enqueue_single_vs_raw"] == pytest.approx(
            figures["enqueue_single_per_s"] / figures["raw_single_insert_per_s"], rel=0.01, abs=ROUNDED
        )
    assert not Job.objects.filter(queue="benchmark").exists()
    assert not ExecutionLog.objects.filter(job__queue="benchmark").exists()


def test_a_raw_script_that_does_not_exist_is_refused_before_anything_runs(tmp_path):
    missing = tmp_path / "no_such_script.sql"
    out = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "benchmark", "--raw-script", str(missing), "--json"],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert f"--raw-script {missing} does not exist" in out.stderr
    assert "enqueue:" not in out.stderr


def test_an_unmigrated_database_is_refused_before_anything_runs_naming_the_alias_and_migrate(tmp_path):
    # A SQLite file nothing has migrated (on either run: the cheapest unmigrated database).
    database = tmp_path / "unmigrated.sqlite3"
    out = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "benchmark", "--json"],
        cwd=ROOT,
        env=subprocess_env(DATABASE_URL=f"sqlite:///{database}"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "CommandError: " in out.stderr and "no such table" not in out.stderr
    assert "database 'default'" in out.stderr and "manage.py migrate --database default" in out.stderr
    assert "enqueue:" not in out.stderr and out.stdout == ""


@pytest.mark.postgres
@pytest.mark.acceptance  # the benchmark starts real runworker processes, and a pgqueuer consumer
def test_compare_pgqueuer_reports_its_drain_and_the_ratios_and_drops_its_scratch_database():
    from importlib import metadata

    figures, notes = run_benchmark("--jobs", "500", "--compare", "pgqueuer", "--skip", "single,bulk,drain,latency,raw")
    assert figures["pgqueuer_version"] == metadata.version("pgqueuer")
    assert figures["pgqueuer_drain_per_s"] > 0
    assert figures["pgqueuer_drain_seconds"] > 0
    assert figures["pgqueuer_drain_per_s"] * figures["pgqueuer_drain_seconds"] == pytest.approx(500, rel=0.01)
    for drain in ("drain_default", "drain_c32"):
        assert figures[f"{drain}_per_s"] > 0
        assert figures[f"{drain}_vs_pgqueuer"] == pytest.approx(
            figures[f"{drain}_per_s"] / figures["pgqueuer_drain_per_s"], rel=0.01, abs=ROUNDED
        )
    (scratch,) = re.findall(r"scratch database (taskengine_pgqueuer_\d+)", notes)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [scratch])
        assert cursor.fetchone() == (0,)
    assert not Job.objects.filter(queue="benchmark").exists()


def test_compare_pgqueuer_without_the_package_is_refused_naming_the_extra():
    # None in sys.modules: `import pgqueuer` raises ImportError, as with the package absent.
    hide_and_run = (
        "import runpy, sys; sys.modules['pgqueuer'] = None; "
        "sys.argv = ['manage.py', 'benchmark', '--compare', 'pgqueuer', '--json']; "
        "runpy.run_path('manage.py', run_name='__main__')"
    )
    out = subprocess.run(
        [sys.executable, "-c", hide_and_run],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "--compare pgqueuer needs the pgqueuer package" in out.stderr
    assert "pip install 'taskengine[bench]'" in out.stderr
    assert "Traceback" not in out.stderr
    assert "[benchmark]" not in out.stderr


@pytest.mark.sqlite_only
def test_compare_pgqueuer_on_sqlite_is_refused_before_anything_runs():
    out = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "benchmark", "--compare", "pgqueuer", "--json"],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "--compare pgqueuer needs PostgreSQL" in out.stderr
    assert "enqueue:" not in out.stderr and "drain:" not in out.stderr


@pytest.mark.acceptance  # the benchmark starts real runworker processes
def test_the_modes_report_their_figures_and_prune_only_the_benchmarks_own_rows():
    postgres = connection.vendor == "postgresql"
    if postgres:  # a job retention would prune at its default 7 days; the benchmark must not
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO taskengine_job (task_path, backend, queue, priority, args, kwargs, state, run_after, "
                "enqueued_at, started_at, finished_at, attempts, max_attempts, on_lease_expired) "
                "SELECT 'x.y', 'default', 'other', 0, '[]', '{}', 'succeeded', t, t, t, t, 1, 1, 'retry' "
                "FROM (SELECT now() - interval '10 days' AS t) AS times"
            )
    figures, _ = run_benchmark(
        *("--skip", "single,latency,raw,default", "--work", "io,cpu", "--work-jobs", "100", "--long-drain", "500"),
        *("--retention", "2000", "--sustained", "3", "--sustained-window", "1", "--sustained-rate", "100"),
    )
    for work, ideal in (("io", 2 * 8 / 0.005), ("cpu", min(2, os.cpu_count()) / 0.001)):
        assert figures[f"work_{work}_ideal_per_s"] == pytest.approx(ideal)
        assert figures[f"work_{work}_per_s"] > 0
        assert figures[f"work_{work}_vs_ideal"] == pytest.approx(
            figures[f"work_{work}_per_s"] / ideal, rel=0.01, abs=ROUNDED
        )
    # Fewer jobs than the 20,000 of the head: the head is the whole drain.
    assert figures["long_drain_jobs"] == 500
    assert figures["long_drain_head_per_s"] == pytest.approx(figures["long_drain_per_s"], rel=0.01, abs=ROUNDED)
    assert figures["long_drain_decay"] == pytest.approx(1.0, rel=0.01, abs=ROUNDED)
    assert isinstance(figures["long_drain_vacuums"], int) and figures["long_drain_vacuums"] >= 0
    if not postgres:
        assert figures["sustained"] == "not available on SQLite"
        assert figures["retention"].startswith("not available on SQLite")
        assert not Job.objects.filter(queue="benchmark").exists()
        return
    assert_retention(figures)
    assert_sustained(figures)
    assert Job.objects.filter(queue="other", state="succeeded").count() == 1
    assert not Job.objects.filter(queue="benchmark").exists()


def assert_retention(figures: dict) -> None:
    assert figures["retention_jobs"] == 2000
    assert figures["retention_prune_per_s"] > 0
    assert figures["retention_prune_seconds"] > 0
    assert figures["retention_claims_without"] > 0 and figures["retention_claims_during"] > 0
    assert figures["retention_claim_p99_ratio"] == pytest.approx(
        figures["retention_claim_p99_ms_during"] / figures["retention_claim_p99_ms_without"], rel=0.01, abs=ROUNDED
    )


def assert_sustained(figures: dict) -> None:
    # 100 jobs/s for 3 s, by the producer's schedule: every job due by the last turn.
    assert 270 <= figures["sustained_jobs"] <= 300
    windows = figures["sustained_windows"]
    assert [w["window"] for w in windows] == [0, 1, 2]
    assert sum(w["enqueued"] for w in windows) == figures["sustained_jobs"]
    for w in windows:
        assert w["enqueued"] > 0
        assert 0 <= w["pickup_p50_ms"] <= w["pickup_p95_ms"] <= w["pickup_p99_ms"]
        assert w["job_table_mb"] > 0 and w["claim_index_kb"] > 0 and w["job_dead_tuples"] >= 0
    # Every job finished in a window (1 s: finished_per_s is a count) or after the producer stopped.
    finished = sum(w["finished_per_s"] for w in windows) + figures["sustained_finished_after"]
    assert finished == pytest.approx(figures["sustained_jobs"], abs=0.5)
    # "After" is at or after the producer's end (finished_at >= end), and the backlog's drain
    # time is the last finish minus that end: zero when the last job finished exactly then.
    assert (figures["sustained_backlog_drain_s"] >= 0) == (figures["sustained_finished_after"] > 0)
    assert figures["sustained_pickup_p50_ms"] <= figures["sustained_pickup_p99_ms"]
    assert isinstance(figures["sustained_vacuums"], int) and figures["sustained_vacuums"] >= 0


def test_the_help_lists_every_option():
    # --help crashed: the sustained rate's help had a bare "%" that argparse expands.
    from taskengine.management.commands.benchmark import Command

    text = Command().create_parser("manage.py", "benchmark").format_help()
    assert "--sustained-rate" in text
    assert "70% of" in text.replace("\n", " ").replace("  ", " ")
