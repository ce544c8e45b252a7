"""Operator writes keep the metrics' identity: a queued job cancelled from the console
counts as cancelled (no worker ever sees it), a requeued job counts as requeued."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from prometheus_client import REGISTRY

from taskengine.models import Job
from taskengine.ops import operations
from tests import tasks

LABELS = {"queue": "default", "task": "tests.tasks.add"}


def value(name: str) -> float:
    return REGISTRY.get_sample_value(name, LABELS) or 0.0


@pytest.mark.django_db
def test_cancelling_a_queued_job_and_requeueing_it_are_counted(django_capture_on_commit_callbacks):
    admin = get_user_model().objects.create_superuser("ops", "ops@example.com", "pw-ops-123")
    result = tasks.add.enqueue(1, 1)
    cancelled, requeued = value("taskengine_jobs_cancelled_total"), value("taskengine_jobs_requeued_total")
    with django_capture_on_commit_callbacks(execute=True):
        operations.perform("cancel", result.id, actor=admin, reason="test")
    assert Job.objects.get(pk=result.id).state == "cancelled"
    assert value("taskengine_jobs_cancelled_total") == cancelled + 1
    with django_capture_on_commit_callbacks(execute=True):
        operations.perform("requeue", result.id, actor=admin, reason="test")
    assert Job.objects.get(pk=result.id).state == "queued"
    assert value("taskengine_jobs_requeued_total") == requeued + 1
    assert value("taskengine_jobs_cancelled_total") == cancelled + 1
