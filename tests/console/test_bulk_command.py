"""``manage.py jobs requeue|retry|cancel … [--dry-run]``, ``resume``, ``show``, ``list``:
in process, and as a real subprocess killed with SIGKILL half-way and resumed."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.db.models import Count
from django.db.models.functions import Now

from taskengine.models import BulkOperation, Job, OperatorAction
from taskengine.ops import bulk, bulk_batches
from tests.conftest import ROOT, subprocess_env, wait_for

from .conftest import make_staff


def add_failed(n: int, tenant: str | None, task: str = "tests.tasks.add") -> None:
    """``n`` failed jobs; on PostgreSQL one INSERT … SELECT (10,000 ORM objects cost seconds)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO taskengine_job (task_path, backend, queue, priority, args, kwargs, state, attempts,"
                " max_attempts, on_lease_expired, tenant, finished_at)"
                " SELECT %s, 'default', 'default', 0, '[]', '{}', 'failed', 3, 3, 'retry', %s, now()"
                " FROM generate_series(1, %s)",
                [task, tenant, n],
            )
        return
    values = {"task_path": task, "state": "failed", "attempts": 3, "max_attempts": 3, "tenant": tenant}
    Job.objects.bulk_create([Job(finished_at=Now(), **values) for _ in range(n)], batch_size=2000)


def jobs(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("jobs", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db
def test_dry_run_prints_the_exact_count_and_changes_nothing():
    add_failed(7, "a")
    add_failed(2, "a", task="tests.tasks.noop")
    out, _ = jobs("requeue", "--state", "failed", "--task", "tests.tasks.add", "--dry-run")
    assert out.strip() == "7 job(s) would be changed by requeue (dry run: nothing changed)."
    assert not BulkOperation.objects.exists() and not OperatorAction.objects.exists()
    assert Job.objects.filter(state="failed").count() == 9


@pytest.mark.django_db
def test_requeue_as_a_tenant_scoped_user_and_show():
    make_staff("op_a", ["a"])
    add_failed(5, "a")
    add_failed(4, "b")
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    out, err = jobs("requeue", "--state", "failed", "--since", since, "--as-user", "op_a", "--batch-size", "2")
    op = BulkOperation.objects.get()
    assert f"Bulk operation {op.pk} done: 5 changed, 0 skipped of 5 matched." in out
    assert f"Bulk operation {op.pk}: requeue of 5 job(s)." in err
    assert Job.objects.filter(tenant="b", state="failed").count() == 4
    assert OperatorAction.objects.filter(action="requeue", actor_repr="op_a", tenant="a").count() == 5
    shown = json.loads(jobs("show", str(op.pk))[0])
    assert (shown["state"], shown["changed"], shown["batches"], shown["actor"]) == ("done", 5, 3, "op_a")
    assert str(op.pk) in jobs("list")[0]


@pytest.mark.django_db
def test_without_as_user_the_actor_is_the_cli_and_sees_every_tenant():
    add_failed(2, "a")
    add_failed(2, None)
    jobs("cancel", "--state", "queued")  # nothing queued: an operation that is done at once
    jobs("requeue", "--state", "failed")
    assert OperatorAction.objects.filter(action="requeue", actor_repr__startswith="cli:").count() == 4


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--state", "exploded"], "state"),
        (["--since", "last tuesday"], "not an ISO 8601 date"),
        (["--task", "a\x00b"], "task: Null characters are not allowed"),
        (["--as-user", "nobody"], "no user 'nobody'"),
        (["--batch-size", "0"], "batch size"),
    ],
)
def test_bad_arguments_are_command_errors(args, message):
    with pytest.raises(CommandError, match=message):
        jobs("requeue", *args)
    assert not BulkOperation.objects.exists()


@pytest.mark.django_db
def test_a_user_without_the_permission_is_refused():
    make_staff("viewer", ["a"], perms=["view_job"])
    add_failed(1, "a")
    with pytest.raises(CommandError, match="permission"):
        jobs("requeue", "--as-user", "viewer")


@pytest.mark.django_db
def test_resume_of_an_unknown_operation():
    with pytest.raises(CommandError, match="no bulk operation 999"):
        jobs("resume", "999")


# --- killed half-way and resumed -----------------------------------------------------------

# 10,000 jobs on PostgreSQL (the figure); SQLite, slower to write, shows the same
# with fewer.
SIZES = {"postgresql": (10_000, 500), "sqlite": (2_000, 100)}


def run_command(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "jobs", *args],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.acceptance
def test_bulk_requeue_killed_half_way_and_resumed_changes_each_tenant_job_once():
    total, batch = SIZES[connection.vendor]
    make_staff("op_a", ["a"])
    add_failed(total, "a")
    add_failed(total // 10, "b")
    add_failed(total // 20, "a", task="tests.tasks.noop")
    since = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    args = ["requeue", "--state", "failed", "--task", "tests.tasks.add", "--since", since, "--as-user", "op_a"]

    first = run_command(*args, "--batch-size", str(batch), "--pause", "0.2", "--no-progress")
    try:
        wait_for(
            lambda: BulkOperation.objects.filter(changed__gte=3 * batch).exists() or first.poll() is not None,
            timeout=60,
            message="three batches to commit",
        )
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(10)
    assert first.returncode == -signal.SIGKILL, first.stderr.read() if first.stderr else ""
    op = BulkOperation.objects.get()
    assert op.state == "running" and 0 < op.changed < total
    assert op.runner == f"cli:{socket.gethostname()}:{first.pid}"
    # What committed is whole batches: the jobs, their audit rows and the cursor together.
    assert op.changed == op.batches * batch
    assert Job.objects.filter(tenant="a", state="queued").count() == op.changed
    assert OperatorAction.objects.filter(action="requeue").count() == op.changed

    second = run_command(*args, "--no-progress")
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, out + err
    assert f"Resuming unfinished bulk operation {op.pk}" in err
    op.refresh_from_db()
    assert (op.state, op.matched, op.changed, op.skipped) == ("done", total, total, 0)
    assert f"Bulk operation {op.pk} done: {total} changed" in out
    assert BulkOperation.objects.count() == 1

    assert Job.objects.filter(tenant="a", task_path="tests.tasks.add", state="queued", max_attempts=4).count() == total
    assert Job.objects.filter(tenant="b", state="failed").count() == total // 10
    assert Job.objects.filter(task_path="tests.tasks.noop", state="failed").count() == total // 20
    rows = OperatorAction.objects.filter(action="requeue", target_type="job")
    assert rows.count() == total
    assert not rows.values("target_id").annotate(n=Count("id")).filter(n__gt=1).exists(), "a job audited twice"
    assert set(rows.values_list("actor_repr", "tenant").distinct()) == {("op_a", "a")}
    assert OperatorAction.objects.filter(action="bulk.requeue", target_id=str(op.pk)).count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
def test_two_runners_of_one_operation_take_turns_and_apply_each_batch_once():
    user = make_staff("op_a", ["a"])
    add_failed(2_000, "a")
    op = bulk.create("requeue", {"state": "failed"}, actor=user, batch_size=100)
    errors: list[BaseException] = []

    def runner(name: str) -> None:
        try:
            bulk_batches.run(op.pk, runner=name)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=runner, args=(f"t{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    op.refresh_from_db()
    assert (op.state, op.changed, op.skipped, op.batches) == ("done", 2_000, 0, 20)
    rows = OperatorAction.objects.filter(action="requeue", target_type="job")
    assert rows.count() == 2_000 and rows.values("target_id").distinct().count() == 2_000
