"""The fault suite's own yardsticks: overlap detection and the recovery window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.faults.harness import Marker, overlapping_jobs, recovery_after

pytestmark = pytest.mark.faults

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_two_executions_of_a_job_overlapping_in_time_are_found():
    markers = [
        Marker(1, 1, 100, at(0), at(2)),
        Marker(1, 2, 200, at(1.5), at(3)),
        Marker(2, 1, 100, at(0), at(1)),
        Marker(2, 2, 200, at(1), at(2)),
    ]
    assert set(overlapping_jobs(markers, killed_at={})) == {1}


def test_an_execution_cut_short_by_kill_9_lasts_until_the_kill_was_seen():
    killed = {100: at(5)}
    rerun_after_the_kill = [Marker(1, 1, 100, at(0), None), Marker(1, 2, 200, at(5.5), at(6))]
    rerun_before_the_kill = [Marker(2, 1, 100, at(0), None), Marker(2, 2, 200, at(4), at(6))]
    assert set(overlapping_jobs(rerun_after_the_kill + rerun_before_the_kill, killed)) == {2}


def test_an_execution_overlapping_an_earlier_longer_one_is_found_past_a_short_one_between():
    markers = [Marker(1, 1, 100, at(0), at(10)), Marker(1, 2, 200, at(1), at(1)), Marker(1, 3, 300, at(5), at(6))]
    assert set(overlapping_jobs(markers, killed_at={})) == {1}


def test_recovery_is_the_first_window_reaching_70_percent_of_the_pre_fault_count():
    pre_count = 30  # 10 jobs/s over 3 s
    slow = [i * 0.5 for i in range(10)]  # 2 jobs/s for 5 s
    fast = [5 + i * 0.1 for i in range(100)]  # 10 jobs/s from 5 s on
    recovered = recovery_after(slow + fast, pre_count, backlog_until=20)
    assert recovered is not None
    start, count = recovered
    assert 3.5 < start < 5.0 and count >= 21


def test_no_recovery_is_claimed_once_the_backlog_ran_dry():
    pre_count = 30
    slow = [i * 0.5 for i in range(10)]
    assert recovery_after(slow, pre_count, backlog_until=20) is None
    fast_after_the_backlog = [9 + i * 0.1 for i in range(100)]
    assert recovery_after(slow + fast_after_the_backlog, pre_count, backlog_until=10) is None
