"""Two `manage.py reconcile --apply --json` processes at once fix each inconsistency
once between them: compare-and-set updates and insert-if-absent on unique indexes,
never check-then-write."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from taskengine.models import ExecutionLog, Job, MissedSlot, OperatorAction
from tests.conftest import ROOT, subprocess_env

from . import scenario

COPIES = 15


def start_reconcile() -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "manage.py"),
            "reconcile",
            "--apply",
            "--json",
            "--no-progress",
            "--batch-size",
            "4",
        ],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def fixed_ids(outputs: list[dict], *categories: str) -> list:
    return [ident for out in outputs for a in out["applied"] if a["category"] in categories for ident in a["ids"]]


@pytest.mark.acceptance
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_applies_fix_each_inconsistency_once():
    sc = scenario.build(copies=COPIES)
    procs = [start_reconcile(), start_reconcile()]
    outputs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        outputs.append(json.loads(stdout))

    # Jobs with an expired lease may be recovered under expired_leases or, by the other
    # process, under blocked_unique_keys: either way exactly once.
    recovered = fixed_ids(outputs, "expired_leases", "blocked_unique_keys")
    assert sorted(recovered) == sorted(sc.expected["expired_leases"])
    for category in ("dead_worker_jobs", "duplicate_slots", "user_id_str_mismatch", "user_id_str_missing"):
        ids = fixed_ids(outputs, category)
        assert sorted(ids) == sorted(sc.expected[category]), category
    assert sorted(fixed_ids(outputs, "missed_slots")) == sorted(sc.expected["missed_slots"])

    assert MissedSlot.objects.count() == len(sc.expected["missed_slots"])
    assert not Job.objects.filter(pk__in=recovered, state="running").exists()
    assert ExecutionLog.objects.filter(user_id__isnull=False, user_id_str__isnull=True).count() == 0
    # One audit row per job fix, never two.
    job_audits = Counter(
        OperatorAction.objects.filter(target_type="job", action__startswith="reconcile.").values_list(
            "target_id", flat=True
        )
    )
    assert set(job_audits.values()) == {1}
    assert len(job_audits) == 2 * COPIES + len(sc.expected["duplicate_slots"])
