"""Queue limits and per-key concurrency against real ``runworker`` processes (issue #15):
each job writes its start and end (tests.tasks.span), and the markers show how many ran at
once. A queue limited to 2 served by two workers at concurrency 8 never runs more than 2;
jobs of a key limited to 1 never overlap while other keys' jobs run beside them; a rate of
20/s started for 10 s starts 200 ± 20 jobs (counted on the database clock)."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from taskengine.models import Job
from taskengine.ops import queue_control
from tests import tasks
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.acceptance]

START_UP = 60  # a bound for a loaded machine's start-up, not a promise
CLI = "cli:tester"


def spans(marker_dir: Path) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for path in marker_dir.glob("*.span"):
        for line in path.read_text().splitlines():
            start, end = (float(x) for x in line.split())
            out.setdefault(path.stem, []).append((start, end))
    return out


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def all_succeeded(ids: list[int]) -> bool:
    return Job.objects.filter(pk__in=ids, state="succeeded").count() == len(ids)


def limit_of_two(worker_process, tmp_path: Path) -> None:
    queue_control.set_limits("demo", concurrency=2, actor=CLI)
    ids = [int(tasks.span.using(queue_name="demo").enqueue(str(tmp_path), f"j{i}", 0.25).id) for i in range(16)]
    for name in ("a", "b"):
        worker_process("--queues", "demo", "--concurrency", "8", "--no-leader", name=name)
    wait_for(lambda: all_succeeded(ids), timeout=START_UP, message="every job of the limited queue to finish")
    intervals = [span for runs in spans(tmp_path).values() for span in runs]
    assert len(intervals) == len(ids)
    assert most_at_once(intervals) == 2  # never more, and the limit is used


@pytest.mark.postgres
def test_a_queue_limited_to_two_runs_at_most_two_across_two_workers(worker_process, tmp_path):
    limit_of_two(worker_process, tmp_path)


@pytest.mark.sqlite_only
def test_a_queue_limited_to_two_runs_at_most_two_across_two_workers_on_sqlite(worker_process, tmp_path):
    limit_of_two(worker_process, tmp_path)


def keys_limited_to_one(worker_process, tmp_path: Path) -> None:
    ids = []
    for key in ("k1", "k2", "k3"):
        keyed = tasks.span.using(concurrency_key=key)
        ids += [int(keyed.enqueue(str(tmp_path), f"{key}-{i}", 0.3).id) for i in range(4)]
    worker_process("--queues", "default", "--concurrency", "8", "--no-leader", name="a")
    worker_process("--queues", "default", "--concurrency", "8", "--no-leader", name="b")
    wait_for(lambda: all_succeeded(ids), timeout=START_UP, message="every keyed job to finish")
    by_key: dict[str, list[tuple[float, float]]] = {}
    for name, runs in spans(tmp_path).items():
        by_key.setdefault(name.split("-")[0], []).extend(runs)
    assert sorted(by_key) == ["k1", "k2", "k3"]
    for key, runs in by_key.items():
        assert len(runs) == 4 and most_at_once(runs) == 1, (key, runs)
    assert most_at_once([run for runs in by_key.values() for run in runs]) >= 2  # other keys ran beside


@pytest.mark.postgres
def test_jobs_of_a_key_limited_to_one_never_overlap_while_other_keys_run(worker_process, tmp_path):
    keys_limited_to_one(worker_process, tmp_path)


@pytest.mark.sqlite_only
def test_jobs_of_a_key_limited_to_one_never_overlap_while_other_keys_run_on_sqlite(worker_process, tmp_path):
    keys_limited_to_one(worker_process, tmp_path)


@pytest.mark.postgres
def test_a_rate_of_20_per_second_starts_200_jobs_in_10_seconds(worker_process, tmp_path):
    queue_control.set_limits("demo", rate="20/s", actor=CLI)
    tasks.noop.using(queue_name="demo").enqueue_many([() for _ in range(320)])
    for name in ("a", "b"):
        worker_process("--queues", "demo", "--concurrency", "8", "--no-leader", name=name)
    wait_for(
        lambda: Job.objects.filter(queue="demo", started_at__isnull=False).exists(),
        timeout=START_UP,
        message="the first start",
    )
    first = min(Job.objects.filter(queue="demo", started_at__isnull=False).values_list("started_at", flat=True))
    time.sleep(10.5)
    started = Job.objects.filter(queue="demo", started_at__gte=first, started_at__lt=first + timedelta(seconds=10))
    assert 180 <= started.count() <= 220, started.count()
    assert not Job.objects.filter(queue="demo", state="failed").exists()
