"""``manage.py benchmark`` end to end at a small size: every figure it promises comes out,
the drain runs real workers that are all up before the jobs exist, the raw limit comes
from the project's own pgbench script (nothing outside the checkout), and the benchmark
leaves none of its jobs, nor its scratch database, behind. (The figures themselves are
read from the command's output in docs/performance.md, never asserted as timings here.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from django.db import connection

from taskengine.models import ExecutionLog, Job
from tests.conftest import ROOT, subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)


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
    ):
        assert figures[key] > 0, (key, figures)
    assert figures["latency_p50_ms"] <= figures["latency_p95_ms"]
    assert figures["latency_samples"] == 5
    if connection.vendor == "postgresql":
        assert figures["raw_claim_limit_per_s"] > 0
        assert figures["drain_vs_raw"] == pytest.approx(
            figures["drain_per_s"] / figures["raw_claim_limit_per_s"], rel=0.01
        )
        (scratch,) = re.findall(r"scratch database (taskengine_raw_claim_\d+)", notes)
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [scratch])
            assert cursor.fetchone() == (0,)
        assert figures["raw_single_insert_per_s"] > 0
        assert figures["enqueue_single_vs_raw"] == pytest.approx(
            figures["enqueue_single_per_s"] / figures["raw_single_insert_per_s"], rel=0.01
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
