"""The leader's vacuum of the job tables (leader/vacuum.py): when, what, and what not."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from prometheus_client import REGISTRY

from taskengine.bench.base import LeaderVacuum
from taskengine.leader import vacuum
from taskengine.models import Job
from taskengine.runtime.leader_service import default_services
from tests import tasks

from .conftest import lead

pytestmark = pytest.mark.django_db(transaction=True)


def dead_tuples(table: str = "taskengine_job") -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = %s", [table])
        return int(cursor.fetchone()[0])


def vacuum_count(table: str = "taskengine_job") -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = %s", [table])
        return int(cursor.fetchone()[0])


def vacuums_counted(table: str = "taskengine_job") -> float:
    return REGISTRY.get_sample_value("taskengine_tables_vacuumed_total", {"table": table}) or 0.0


def make_dead_tuples(at_least: int) -> None:
    """Enqueue jobs and update them until the statistics count ``at_least`` dead tuples
    in the job table (a backend reports its counts when it goes idle; the flush is
    forced so the test need not wait for the next one)."""
    for i in range(3):
        tasks.add.enqueue(i, i)
    deadline = time.monotonic() + 20
    while dead_tuples() < at_least:
        assert time.monotonic() < deadline, f"the statistics never counted {at_least} dead tuples"
        Job.objects.update(priority=1 - 2 * (Job.objects.filter(priority=1).exists()))
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_force_next_flush()")
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")


@pytest.mark.postgres
def test_a_job_table_with_dead_tuples_past_the_threshold_is_vacuumed():
    make_dead_tuples(20)
    before = vacuum_count()
    counted = vacuums_counted()
    done = vacuum.run_once("default", lead(), dead_tuples=20)
    assert [v.table for v in done] == ["taskengine_job"]
    assert done[0].dead_tuples >= 20
    assert vacuum_count() == before + 1
    assert vacuums_counted() == counted + 1  # taskengine_tables_vacuumed_total
    assert dead_tuples() < 20  # the vacuum removed them (and reset the count)


@pytest.mark.postgres
def test_below_the_threshold_nothing_is_vacuumed():
    make_dead_tuples(5)
    before = vacuum_count()
    assert vacuum.run_once("default", lead(), dead_tuples=10**9) == []
    assert vacuum_count() == before


@pytest.mark.postgres
def test_the_setting_none_turns_the_vacuum_off(settings):
    make_dead_tuples(5)
    settings.TASKENGINE = {**getattr(settings, "TASKENGINE", {}), "VACUUM_DEAD_TUPLES": None}
    before = vacuum_count()
    assert vacuum.run_once("default", lead()) == []
    assert vacuum_count() == before


@pytest.mark.postgres
def test_a_table_another_vacuum_holds_is_skipped_without_waiting():
    """SKIP_LOCKED: a vacuum that starts between the look and the VACUUM (autovacuum's,
    say) holds SHARE UPDATE EXCLUSIVE; the leader's ticker must not wait behind it. The
    lock is taken here by another session, as a running vacuum would hold it."""
    import psycopg

    from tests.conftest import subprocess_database_url

    make_dead_tuples(20)
    before = vacuum_count()
    counted = vacuums_counted()
    holder = psycopg.connect(subprocess_database_url().replace("postgres://", "postgresql://"))
    try:
        holder.execute("LOCK TABLE taskengine_job IN SHARE UPDATE EXCLUSIVE MODE")
        outcome: list[object] = []
        runner = threading.Thread(
            target=lambda: outcome.append(vacuum.run_once("default", None, dead_tuples=20)), daemon=True
        )
        runner.start()
        runner.join(timeout=15)
        assert not runner.is_alive(), "the vacuum waited for the table's lock"
        assert outcome == [[]]  # it returned, and does not report the skipped table as vacuumed
    finally:
        holder.rollback()
        holder.close()
    assert vacuum_count() == before
    assert vacuums_counted() == counted  # nor counts it in taskengine_tables_vacuumed_total


@pytest.mark.postgres
def test_a_role_that_may_not_vacuum_the_tables_picks_none():
    make_dead_tuples(20)
    role = f"te_no_vacuum_{uuid.uuid4().hex[:8]}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {role}")
        cursor.execute(f"GRANT SELECT ON taskengine_job, task_execution_logs TO {role}")
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"SET ROLE {role}")
        try:
            assert vacuum.run_once("default", None, dead_tuples=20) == []
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET ROLE")
        assert [v.table for v in vacuum.run_once("default", None, dead_tuples=20)] == ["taskengine_job"]
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"REVOKE ALL ON taskengine_job, task_execution_logs FROM {role}")
            cursor.execute(f"DROP ROLE {role}")


@pytest.mark.postgres
def test_inside_a_transaction_it_refuses_with_a_clear_error():
    with transaction.atomic(), pytest.raises(vacuum.VacuumInTransaction, match="outside transactions"):
        vacuum.run_once("default", None, dead_tuples=0)


@pytest.mark.sqlite_only
def test_on_sqlite_there_is_nothing_to_vacuum():
    tasks.add.enqueue(1, 2)
    Job.objects.update(priority=3)
    assert vacuum.run_once("default", None, dead_tuples=0) == []


def test_the_leader_runs_the_vacuum_among_its_services():
    services = {service.name: service for service in default_services("default")}
    assert "vacuum" in services
    assert services["vacuum"].interval == 10.0


@pytest.mark.postgres
def test_the_benchmarks_stand_in_runs_the_leaders_vacuum_on_its_cadence(settings):
    """bench.base.LeaderVacuum: what the long-drain and sustained figures rely on."""
    make_dead_tuples(20)
    settings.TASKENGINE = {
        **getattr(settings, "TASKENGINE", {}),
        "VACUUM_DEAD_TUPLES": 20,
        "VACUUM_INTERVAL_SECONDS": 0.05,
    }
    before = vacuum_count()
    with LeaderVacuum("default") as vacuums:
        deadline = time.monotonic() + 20
        while vacuums.vacuums == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert vacuums.vacuums >= 1
    assert vacuum_count() > before


def cost_delay_seen_by_each_vacuum(**settings_overrides) -> tuple[list[str], str, str]:
    """Run the leader's vacuum once on tables due for it; returns vacuum_cost_delay as the
    session had it at each VACUUM statement (read on the same connection just before the
    statement runs), and before and after the call."""

    def show() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SHOW vacuum_cost_delay")
            return str(cursor.fetchone()[0])

    seen: list[str] = []

    def wrapper(execute, sql, params, many, context):
        if sql.startswith("VACUUM"):
            seen.append(show())
        return execute(sql, params, many, context)

    make_dead_tuples(20)
    before = show()
    with connection.execute_wrapper(wrapper):
        done = vacuum.run_once("default", dead_tuples=20)
    assert "taskengine_job" in [v.table for v in done]
    return seen, before, show()


@pytest.mark.postgres
def test_the_vacuum_is_paced_as_autovacuum_and_leaves_the_session_as_it_was():
    seen, before, after = cost_delay_seen_by_each_vacuum()
    assert seen and set(seen) == {"2ms"}  # VACUUM_COST_DELAY_MS: autovacuum_vacuum_cost_delay's default
    assert after == before == "0"


@pytest.mark.postgres
@pytest.mark.parametrize("setting", [{"VACUUM_COST_DELAY_MS": None}, {"VACUUM_COST_DELAY_MS": 0}, {"POLL_ONLY": True}])
def test_the_vacuum_runs_at_full_speed_when_told_or_behind_a_transaction_pooler(settings, setting):
    settings.TASKENGINE = {**getattr(settings, "TASKENGINE", {}), **setting}
    seen, _, after = cost_delay_seen_by_each_vacuum()
    assert seen and set(seen) == {"0"}
    assert after == "0"


@pytest.mark.postgres
@pytest.mark.parametrize("value", ["fast", 150, -1, True])
def test_a_cost_delay_that_is_not_a_number_of_milliseconds_is_refused_clearly(settings, value):
    settings.TASKENGINE = {**getattr(settings, "TASKENGINE", {}), "VACUUM_COST_DELAY_MS": value}
    make_dead_tuples(20)
    with pytest.raises(ImproperlyConfigured, match=r"VACUUM_COST_DELAY_MS must be None or a number .* 0 to 100"):
        vacuum.run_once("default", dead_tuples=20)
