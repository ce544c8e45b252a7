"""reconcile finds exactly the inconsistencies built on purpose, --apply fixes exactly
the fixable ones (with audit rows), and a second --apply changes nothing."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command

from taskengine.models import ExecutionLog, Job, MissedSlot, OperatorAction
from taskengine.ops import reconcile

from . import scenario

REPORT_ONLY = {"stale_queued_jobs", "overdue_schedules"}


def found(result: reconcile.Report) -> dict[str, list]:
    return {f.category: sorted(map(str, f.sample_ids)) for f in result.findings if f.category != "migration_gate"}


def expected_ids(sc: scenario.Scenario) -> dict[str, list]:
    return {name: sorted(map(str, ids)) for name, ids in sc.expected.items()}


def applied(result: list[reconcile.Applied]) -> dict[str, int]:
    return {a.category: a.fixed for a in result}


@pytest.mark.django_db
def test_report_finds_exactly_the_inconsistencies_built():
    sc = scenario.build()
    result = reconcile.report()
    assert result.gate["ready"] is True
    assert found(result) == expected_ids(sc)
    assert {f.category: f.count for f in result.findings} == {
        "migration_gate": 0,
        **{name: len(ids) for name, ids in sc.expected.items()},
    }
    assert all(f.action for f in result.findings)
    assert result.finding("missed_slots").detail == {"schedules": {"gap": 1, "cron": 1}}
    workers = {w["worker_id"]: w for w in result.workers}
    assert workers["w-live"]["alive"] and not workers["w-dead"]["alive"]
    # w-live serves "default".
    assert result.finding("stale_queued_jobs").detail == {"queues": {"default": 1}, "unserved_queues": []}


@pytest.mark.django_db
def test_report_names_stale_queues_no_live_worker_serves():
    now = scenario.db_now()
    scenario.build()
    from datetime import timedelta

    Job.objects.create(task_path=scenario.TASK, queue="nobody", run_after=now - timedelta(hours=3))
    detail = reconcile.report().finding("stale_queued_jobs").detail
    assert detail == {"queues": {"default": 1, "nobody": 1}, "unserved_queues": ["nobody"]}


@pytest.mark.django_db
def test_report_writes_nothing():
    scenario.build()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        reconcile.report()
    writes = [q["sql"] for q in queries if q["sql"].lstrip().split()[0].upper() in {"INSERT", "UPDATE", "DELETE"}]
    assert writes == []


@pytest.mark.django_db
def test_apply_fixes_exactly_the_fixable_findings_and_a_second_apply_changes_nothing():
    sc = scenario.build()
    first = reconcile.apply()
    assert applied(first) == {
        "expired_leases": 1,
        "dead_worker_jobs": 1,
        "blocked_unique_keys": 0,
        "missed_slots": 2,
        "duplicate_slots": 1,
        "user_id_str_mismatch": 1,
        "user_id_str_missing": 1,
    }
    expired, dead = (Job.objects.get(pk=sc.expected[c][0]) for c in ("expired_leases", "dead_worker_jobs"))
    assert (expired.state, expired.locked_by, dead.state) == ("queued", None, "queued")
    assert ExecutionLog.objects.get(job=expired, attempt=1).outcome == "lost"
    assert Job.objects.get(pk=sc.expected["duplicate_slots"][0]).state == "cancelled"
    assert MissedSlot.objects.filter(reason="reconcile").count() == 2
    assert ExecutionLog.objects.get(pk=sc.expected["user_id_str_mismatch"][0]).user_id_str == "5"
    assert ExecutionLog.objects.get(pk=sc.expected["user_id_str_missing"][0]).user_id_str == "7"
    # Look-alikes are untouched.
    assert set(Job.objects.filter(pk__in=sc.healthy_running).values_list("state", flat=True)) == {"running"}
    assert set(Job.objects.filter(pk__in=sc.future_queued).values_list("state", flat=True)) == {"queued"}
    assert ExecutionLog.objects.filter(user_id=None, user_id_str="abc").exists()
    audits = OperatorAction.objects.filter(actor_repr="system:reconcile")
    # Two recoveries, two slots, one duplicate, one mismatch, one backfill batch.
    assert audits.count() == 2 + 2 + 1 + 1 + 1
    assert audits.filter(action="backfill.user_id_str").count() == 1

    after = reconcile.report()
    assert {f.category for f in after.findings if f.count} == REPORT_ONLY
    audit_rows = OperatorAction.objects.count()
    second = reconcile.apply()
    assert set(applied(second).values()) == {0}
    assert OperatorAction.objects.count() == audit_rows


@pytest.mark.django_db
def test_apply_is_scoped_to_tenants_and_categories():
    mine = scenario.build(tenant="acme")
    theirs = scenario.build(tenant="globex", tag="-g")
    result = reconcile.apply(tenants=["acme"], categories=["expired_leases", "dead_worker_jobs", "missed_slots"])
    assert applied(result) == {"expired_leases": 1, "dead_worker_jobs": 1, "missed_slots": 2}
    assert Job.objects.get(pk=mine.expected["expired_leases"][0]).state == "queued"
    assert Job.objects.get(pk=theirs.expected["expired_leases"][0]).state == "running"
    assert Job.objects.get(pk=theirs.expected["dead_worker_jobs"][0]).state == "running"
    visible = reconcile.report(tenants=["acme"])
    assert visible.finding("expired_leases").count == 0
    assert visible.finding("user_id_str_missing").sample_ids == mine.expected["user_id_str_missing"]
    assert reconcile.report(tenants=["globex"]).finding("missed_slots").count == 2
    assert reconcile.report(tenants=[]).found == 0  # a staff user without tenants sees nothing
    with pytest.raises(ValueError, match="unknown reconcile category"):
        reconcile.apply(categories=["nope"])


@pytest.mark.django_db
def test_recovery_of_a_job_that_finished_meanwhile_changes_nothing():
    sc = scenario.build()
    job_id = sc.expected["expired_leases"][0]
    # The job finishes between the report's read and the fix's write.
    Job.objects.filter(pk=job_id).update(
        state="succeeded", locked_by=None, lease_expires_at=None, finished_at=scenario.db_now()
    )
    assert applied(reconcile.apply(categories=["expired_leases"])) == {"expired_leases": 0}
    assert Job.objects.get(pk=job_id).state == "succeeded"


@pytest.mark.django_db
def test_command_json_shape_and_check_exit_code():
    sc = scenario.build()
    out = StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("reconcile", "--json", "--check", "--no-progress", stdout=out)
    assert exited.value.code == 1
    data = json.loads(out.getvalue())
    assert set(data) == {"gate", "leader", "workers", "findings"}
    assert data["gate"]["ready"] is True
    for finding in data["findings"]:
        assert {"category", "count", "sample_ids", "action"} <= set(finding)
    by_category = {f["category"]: f for f in data["findings"]}
    assert by_category["dead_worker_jobs"]["sample_ids"] == sc.expected["dead_worker_jobs"]


@pytest.mark.django_db
def test_command_reports_the_leader_and_its_term():
    from datetime import timedelta

    from taskengine.models import Leader

    Leader.objects.create(
        name="maintenance", holder="host-1", term=7, expires_at=scenario.db_now() + timedelta(seconds=30)
    )
    out = StringIO()
    call_command("reconcile", "--json", "--check", "--no-progress", stdout=out)  # clean: exit 0
    leader = json.loads(out.getvalue())["leader"]
    assert (leader["holder"], leader["term"], leader["expired"]) == ("host-1", 7, False)
    assert leader["expires_at"]


@pytest.mark.django_db
def test_command_text_output_and_apply_progress_on_stderr():
    scenario.build()
    out, err = StringIO(), StringIO()
    call_command("reconcile", "--apply", "--category", "expired_leases", stdout=out, stderr=err)
    assert "!! expired_leases: 1" in out.getvalue()
    assert "applied expired_leases: 1 fixed" in out.getvalue()
    assert "checking expired_leases" in err.getvalue()


@pytest.mark.parametrize("policy", ["skip", "run_once", "catch_up"])
@pytest.mark.django_db
def test_slots_the_real_scheduler_wrote_after_an_outage_reconcile_clean(policy):
    from datetime import timedelta

    from taskengine.leader.election import ELECTION, LeaderLease
    from taskengine.leader.schedule_enqueuer import Scheduler
    from taskengine.models import Leader, Schedule

    now = scenario.db_now()
    minute = now.replace(second=0, microsecond=0)
    Leader.objects.create(name=ELECTION, holder="reconcile-test", term=1, expires_at=now + timedelta(minutes=5))
    for interval, name in ((60, "minutely"), (300, "five")):
        Schedule.objects.create(
            name=f"{name}-{policy}",
            task_path=scenario.TASK,
            interval_seconds=interval,
            misfire_policy=policy,
            catch_up_limit=3,
            last_slot_at=minute - timedelta(minutes=45),
        )
    Scheduler("default", definitions=[]).run_once(LeaderLease(ELECTION, "reconcile-test", 1))
    assert Job.objects.filter(schedule__isnull=False).exists()
    result = reconcile.report(categories=["missed_slots", "duplicate_slots", "overdue_schedules"])
    assert {f.category: f.count for f in result.findings} == {
        "migration_gate": 0,
        "missed_slots": 0,
        "duplicate_slots": 0,
        "overdue_schedules": 0,
    }
