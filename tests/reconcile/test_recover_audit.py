"""The audit row of a reconcile recovery describes the attempt the recovery took, not
the one the report page saw: between the report's read and the fix's write the job can
be recovered, claimed again by another worker and lose that lease too."""

from __future__ import annotations

from datetime import timedelta

import pytest

from taskengine.models import Job, OperatorAction
from taskengine.ops.reconcile import jobs as reconcile_jobs
from taskengine.ops.reconcile.base import Context

from . import scenario

pytestmark = pytest.mark.django_db


def test_recover_audits_the_attempt_and_worker_it_actually_recovered():
    now = scenario.db_now()
    job = scenario.running_job(now, "w-first", -60, tenant="acme")
    seen_by_report = (job.id, 1, "w-first", "acme")
    # Meanwhile: recovered, re-claimed by w-second as attempt 2, whose lease expired too.
    Job.objects.filter(pk=job.id).update(attempts=2, locked_by="w-second", lease_expires_at=now - timedelta(seconds=30))

    recovered = reconcile_jobs._recover(Context(), "expired_leases", [seen_by_report], "lease expired")

    assert recovered == [job.id]
    action = OperatorAction.objects.get(target_id=str(job.id))
    assert action.state_before == {"state": "running", "attempts": 2, "locked_by": "w-second"}
    assert action.state_after["attempts"] == 2
    assert action.tenant == "acme"
