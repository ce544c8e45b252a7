"""A queue dedicated to a tenant (``TASKENGINE["QUEUES"][name]["tenant"]``) carries that
tenant's jobs only. Its tenant's operators may pause it (docs/queues.md), so a job of
another tenant — or of none — in it would be halted by an operator who cannot see it:
enqueue refuses such a job with a clear error and writes nothing. On both databases."""

from __future__ import annotations

import pytest

from taskengine.compat import InvalidTask
from taskengine.models import Job
from tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _dedicated(settings):
    settings.TASKS = {"default": {**settings.TASKS["default"], "QUEUES": []}}  # any queue name
    settings.TASKENGINE = {"QUEUES": {"reports-acme": {"tenant": "acme"}}}


def test_a_tenants_job_is_enqueued_into_the_queue_dedicated_to_it():
    result = tasks.add.using(queue_name="reports-acme", tenant="acme").enqueue(1, 2)
    assert Job.objects.get(pk=int(result.id)).tenant == "acme"


@pytest.mark.parametrize("tenant", ["globex", None], ids=["another-tenant", "no-tenant"])
def test_a_job_of_another_tenant_or_of_none_is_refused_and_nothing_is_written(tenant):
    task = tasks.add.using(queue_name="reports-acme", tenant=tenant)
    with pytest.raises(InvalidTask, match=r"queue 'reports-acme' is dedicated to tenant 'acme'.*Nothing was enqueued"):
        task.enqueue(1, 2)
    with pytest.raises(InvalidTask, match="dedicated to tenant 'acme'"):
        task.get_backend().enqueue_many([(task, (1, 2), {}), (tasks.add.using(tenant=tenant), (3, 4), {})])
    assert Job.objects.count() == 0


def test_shared_queues_take_every_tenants_jobs():
    for tenant in ("acme", "globex", None):
        tasks.add.using(queue_name="demo", tenant=tenant).enqueue(1, 2)
    assert Job.objects.filter(queue="demo").count() == 3


def test_the_refusal_follows_the_settings(settings):
    task = tasks.add.using(queue_name="reports-acme", tenant="globex")
    with pytest.raises(InvalidTask):
        task.enqueue(1, 2)
    settings.TASKENGINE = {"QUEUES": {"reports-acme": {"tenant": "globex"}}}
    task.enqueue(1, 2)
    assert Job.objects.filter(queue="reports-acme", tenant="globex").count() == 1
