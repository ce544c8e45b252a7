"""enqueued_jobs / assert_enqueued / assert_not_enqueued: what the backend stored."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from taskengine.models import Job
from taskengine.testing import assert_enqueued, assert_not_enqueued, drain, engine_now, enqueued_jobs
from tests import tasks

pytestmark = pytest.mark.django_db


def test_assert_enqueued_matches_task_arguments_and_options_and_returns_the_jobs():
    run_at = engine_now() + timedelta(minutes=5)
    result = tasks.add.using(queue_name="demo", priority=7, unique_key="sum-1-2", run_after=run_at).enqueue(1, 2)
    [job] = assert_enqueued(
        tasks.add, args=(1, 2), kwargs={}, queue="demo", priority=7, unique_key="sum-1-2", run_after=run_at
    )
    assert job.pk == int(result.id)
    assert_enqueued("tests.tasks.add", args=[1, 2], run_after=timedelta(minutes=5))
    assert_enqueued(tasks.add, run_after=lambda t: t > engine_now(), count=1)


def test_assert_enqueued_lists_the_queued_jobs_and_how_each_differs():
    first = tasks.add.enqueue(1, 2)
    second = tasks.add.using(queue_name="demo").enqueue(1, 3)
    tasks.noop.enqueue()
    with pytest.raises(AssertionError) as failure:
        assert_enqueued(tasks.add, args=[1, 3], queue="default")
    message = str(failure.value)
    assert message.startswith(
        "Expected a queued job of tests.tasks.add with args=[1, 3], queue='default'; none matches.\n3 queued jobs:"
    )
    assert re.search(
        rf"#{first.id} tests\.tasks\.add args=\[1, 2\] kwargs={{}} queue='default' .*"
        r"<- differs in: args$",
        message,
        re.M,
    )
    assert re.search(
        rf"#{second.id} tests\.tasks\.add args=\[1, 3\] .*queue='demo' .*<- differs in: queue$", message, re.M
    )
    assert re.search(r"tests\.tasks\.noop .*<- differs in: task, args$", message, re.M)


def test_assert_enqueued_says_when_nothing_is_queued():
    with pytest.raises(AssertionError, match=r"none matches\.\nNo queued job exists\.$"):
        assert_enqueued(tasks.add)


def test_assert_enqueued_with_a_count_lists_the_matches_when_the_count_differs():
    tasks.add.enqueue(1, 2)
    tasks.add.enqueue(1, 2)
    with pytest.raises(
        AssertionError,
        match=r"Expected 1 × queued job of tests\.tasks\.add with args=\[1, 2\]; "
        r"2 match\.\n2 queued jobs:",
    ):
        assert_enqueued(tasks.add, args=[1, 2], count=1)
    assert len(assert_enqueued(tasks.add, args=[1, 2], count=2)) == 2


def test_assert_not_enqueued_fails_listing_the_matching_job():
    result = tasks.add.using(unique_key="k").enqueue(5, 5)
    assert_not_enqueued(tasks.add, args=[5, 6])
    assert_not_enqueued(tasks.noop)
    with pytest.raises(AssertionError) as failure:
        assert_not_enqueued(tasks.add, unique_key="k")
    assert str(failure.value).startswith(
        "Expected no queued job of tests.tasks.add with unique_key='k'; found 1 queued job:\n"
        f"  #{result.id} tests.tasks.add args=[5, 5]"
    )


def test_enqueued_jobs_sees_queued_jobs_by_default_and_any_state_on_request():
    queued = tasks.add.using(queue_name="demo").enqueue(1, 1)
    done = tasks.noop.enqueue()
    drain(queues=["default"])
    assert [j.pk for j in enqueued_jobs()] == [int(queued.id)]
    assert [j.pk for j in enqueued_jobs(tasks.noop, state=None)] == [int(done.id)]
    assert [j.pk for j in enqueued_jobs(queue="demo", args=[1, 1])] == [int(queued.id)]
    assert enqueued_jobs(tasks.noop) == []
    assert_enqueued(tasks.noop, state="succeeded")
    with pytest.raises(AssertionError, match=r"#\d+ tests\.tasks\.noop state=succeeded"):
        assert_not_enqueued(tasks.noop, state=None)
    assert Job.objects.count() == 2


def test_a_task_argument_that_is_not_a_task_is_refused():
    with pytest.raises(TypeError, match="expected a @task or its import path, got int"):
        enqueued_jobs(42)
