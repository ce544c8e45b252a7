"""drain() treats a task whose module fails to import as a worker does: that attempt
fails with the error recorded; nothing escapes and nothing is left running."""

from __future__ import annotations

import pytest

from taskengine.models import ExecutionLog, Job
from taskengine.testing import drain
from tests import tasks

pytestmark = pytest.mark.django_db


def test_drain_fails_a_job_whose_module_raises_on_import_as_a_worker_does():
    result = tasks.add.using(max_attempts=1).enqueue(1, 2)
    Job.objects.filter(pk=result.id).update(task_path="tests.testing.broken_on_import.add")
    drained = drain()
    assert drained.ran == 1
    assert Job.objects.get(pk=result.id).state == "failed"
    assert ExecutionLog.objects.get(job_id=result.id).error_class == "builtins.RuntimeError"
