"""Fault injection with real processes: two runworker subprocesses drain a backlog on a
throwaway PostgreSQL server while it is restarted, while their connections are cut,
while one of them is killed, while other sessions hold back vacuum, and while other
clients take every connection slot. In every case (FaultCase.assert_promises_kept):
every job reaches a terminal state, no job runs twice at once, the workers that were
not killed are alive and claiming, and throughput is back within 30 % of its pre-fault
rate within 30 s of the fault's end. Figures: docs/reliability.md."""

from __future__ import annotations

import re
import signal
import threading
import time

import psycopg
import pytest

from tests.conftest import wait_for
from tests.faults.harness import Marker, overlapping_jobs
from tests.faults.server import OTHER_CLIENT_ROLE

pytestmark = [pytest.mark.postgres, pytest.mark.faults]


def noticed_the_outage(case) -> None:
    """Each worker logged losing the database and getting it back; the longest time
    each was without it goes into the case's notes."""
    longest = {}
    for name, worker in case.workers.items():
        log = worker.log()
        assert "database error" in log and "resuming" in log, f"{name} never lost the database:\n{log[-3000:]}"
        longest[name] = max(float(s) for s in re.findall(r"database reachable again after ([\d.]+)s", log))
    case.notes["longest time without the database, per worker (s)"] = longest


def test_a_restart_of_postgresql_mid_drain_loses_nothing_and_runs_nothing_twice(fault_case, throwaway_postgres):
    case = fault_case("PostgreSQL restarted mid-drain (fast shutdown, 2 s down, start)")
    case.start()
    with case.injected(expected_seconds=6):
        throwaway_postgres.stop("fast")
        time.sleep(2)  # the outage itself
        throwaway_postgres.start()
    case.await_recovery()
    noticed_the_outage(case)
    case.assert_promises_kept()


def test_a_storm_of_terminated_connections_loses_nothing_and_runs_nothing_twice(fault_case):
    case = fault_case("pg_terminate_backend on every engine connection, every 0.25 s for 8 s")
    case.start()
    cut = 0
    with case.injected(expected_seconds=8):
        ends = time.monotonic() + 8
        while time.monotonic() < ends:
            cut += case.terminate_engine_connections()
            time.sleep(0.25)
    case.notes["connections cut"] = cut
    case.await_recovery()
    noticed_the_outage(case)
    case.assert_promises_kept()


def test_repeated_kill_9_of_one_worker_loses_nothing_and_runs_nothing_twice(fault_case, observer):
    case = fault_case("kill -9 of one of two workers, 3 times (restarted after each)")
    case.start()
    # The first victim is the leader, so the survivor's take-over is part of the case.
    holder = wait_for(
        lambda: observer.rows("SELECT holder FROM taskengine_leader WHERE expires_at > now()"),
        timeout=30,
        interval=0.2,
        message="a leader",
    )[0][0]
    victim = next(name for name, w in case.workers.items() if holder in case.worker_ids(w))
    held_at_kills = 0
    with case.injected(expected_seconds=12):
        for _ in range(3):
            worker = case.workers[victim]
            running = wait_for(
                lambda worker=worker: (
                    worker.proc.poll() is not None
                    or observer.value(
                        "SELECT count(*) FROM task_execution_logs l JOIN taskengine_worker w USING (worker_id) "
                        "WHERE w.pid = %s AND l.finished_at IS NULL",
                        [worker.pid],
                    )
                ),
                timeout=60,
                interval=0.05,
                message=f"{victim} (pid {worker.pid}) to be running jobs",
            )
            assert worker.proc.poll() is None, f"{victim} exited:\n{worker.log()[-3000:]}"
            held_at_kills += running
            case.kill9(victim)
            case.start_worker(victim)
    case.notes["jobs running on the victim at the kills"] = held_at_kills
    case.await_recovery()
    lost_attempts = observer.value(
        "SELECT count(*) FROM task_execution_logs WHERE job_id = ANY(%s) AND outcome = 'lost'", [case.ids]
    )
    case.notes["attempts recovered after the kills"] = lost_attempts
    replacement_first_claim = observer.value(
        "SELECT min(l.started_at) FROM task_execution_logs l JOIN taskengine_worker w USING (worker_id) "
        "WHERE w.pid = %s",
        [case.workers[victim].pid],
    )
    case.notes["seconds from the last kill to the replacement's first claim"] = round(
        (replacement_first_claim - case.fault_ended).total_seconds(), 1
    )
    assert lost_attempts > 0, "no kill cut a job short"
    case.assert_promises_kept()


def test_a_snapshot_held_idle_in_transaction_and_repeatable_read_scans_do_not_stall_the_drain(
    fault_case, throwaway_postgres, observer
):
    case = fault_case("idle-in-transaction snapshot held 10 s, 2 REPEATABLE READ readers scanning the jobs")
    case.start()
    stop = threading.Event()
    scans = [0, 0]

    def read(n: int) -> None:
        with throwaway_postgres.connect(user=OTHER_CLIENT_ROLE, application_name="faults-reader") as conn:
            while not stop.is_set():
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                conn.execute("SELECT state, count(*) FROM taskengine_job GROUP BY state").fetchall()
                conn.execute("SELECT outcome, count(*) FROM task_execution_logs GROUP BY outcome").fetchall()
                conn.execute("COMMIT")
                scans[n] += 1

    vacuum_said: list[str] = []
    holder = throwaway_postgres.connect(user=OTHER_CLIENT_ROLE, application_name="faults-idle-in-transaction")
    readers = [threading.Thread(target=read, args=(n,), daemon=True) for n in range(2)]
    try:
        with case.injected(expected_seconds=10):
            holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            holder.execute("SELECT count(*) FROM taskengine_job").fetchall()  # the snapshot is now held
            for reader in readers:
                reader.start()
            time.sleep(9)  # the fault's duration
            with throwaway_postgres.connect() as vacuum:
                vacuum.add_notice_handler(lambda d: vacuum_said.append(d.message_primary or ""))
                vacuum.execute("VACUUM (VERBOSE) taskengine_job")
            stop.set()
            for reader in readers:
                reader.join(30)
            holder.execute("COMMIT")
    finally:
        stop.set()
        holder.close()
    kept = [
        int(m.group(1)) for line in vacuum_said for m in [re.search(r"(\d+) are dead but not yet removable", line)] if m
    ]
    assert kept and kept[0] > 0, f"the snapshot held nothing back: {vacuum_said}"
    case.notes["dead job rows vacuum could not remove"] = kept[0]
    case.notes["repeatable read scans"] = sum(scans)
    assert all(scans), "a reader never completed a scan"
    case.await_recovery()
    case.assert_promises_kept()


def test_max_connections_exhausted_by_other_clients_loses_nothing_and_runs_nothing_twice(
    fault_case, throwaway_postgres
):
    case = fault_case("max_connections exhausted by other clients for 6 s, engine connections cut once")
    case.start()
    others: list[psycopg.Connection] = []

    def take_a_slot() -> bool:
        try:
            others.append(throwaway_postgres.connect(user=OTHER_CLIENT_ROLE, application_name="faults-other-client"))
            return True
        except psycopg.OperationalError as exc:
            if "too many clients" in str(exc) or "reserved" in str(exc):
                return False
            raise

    refusals = [0] * 3
    ends = 0.0

    def keep_taking_slots(n: int) -> None:
        while time.monotonic() < ends:
            if not take_a_slot():
                refusals[n] += 1
                time.sleep(0.002)

    try:
        with case.injected(expected_seconds=8):
            while take_a_slot():
                pass
            # The workers must now reconnect to a full server: whatever slot their
            # closed connections free is taken by the other clients, who keep trying.
            ends = time.monotonic() + 6
            takers = [threading.Thread(target=keep_taking_slots, args=(n,), daemon=True) for n in range(3)]
            for taker in takers:
                taker.start()
            cut = case.terminate_engine_connections()
            for taker in takers:
                taker.join(30)
            for conn in others:
                conn.close()
    finally:
        ends = 0.0
        for conn in others:
            conn.close()
    refused = sum(refusals)
    case.notes.update(
        {"other clients' connections": len(others), "engine connections cut": cut, "other clients refused": refused}
    )
    assert cut > 0 and refused > 0
    case.await_recovery()
    noticed_the_outage(case)
    logs = "".join(w.log() for w in case.workers.values())
    assert "too many clients" in logs or "connection slots are reserved" in logs, "no worker met the full server"
    case.assert_promises_kept()


def test_the_markers_catch_two_executions_at_once_of_a_job_whose_worker_froze_past_its_lease(fault_case, observer):
    """The control: the one overlap the design accepts (docs/reliability.md, a worker
    frozen longer than its lease) must show in the markers, or "run twice: 0" above
    would prove nothing."""
    case = fault_case("control: a worker frozen past its lease")
    [job_id] = case.feeder.enqueue(case.run_id, 1, work_seconds=4)

    def marker_of(worker) -> list[tuple]:
        return observer.rows(
            "SELECT started_at, ended_at FROM fault_markers WHERE job_id = %s AND pid = %s", [job_id, worker.pid]
        )

    frozen = case.start_worker("frozen")
    wait_for(lambda: marker_of(frozen), timeout=60, interval=0.1, message="the first execution to start")
    frozen.signal(signal.SIGSTOP)
    rerun = case.start_worker("rerun")
    wait_for(lambda: marker_of(rerun), timeout=60, interval=0.2, message="the rerun to start after the lease")
    frozen.signal(signal.SIGCONT)
    wait_for(
        lambda: marker_of(frozen)[0][1] and marker_of(rerun)[0][1],
        timeout=30,
        interval=0.2,
        message="both executions to end",
    )
    markers = [
        Marker(*row)
        for row in observer.rows(
            "SELECT job_id, attempt, pid, started_at, ended_at FROM fault_markers WHERE job_id = %s", [job_id]
        )
    ]
    assert len(markers) == 2
    assert set(overlapping_jobs(markers, killed_at={})) == {job_id}
    wait_for(
        lambda: observer.value("SELECT state FROM taskengine_job WHERE id = %s", [job_id]) == "succeeded",
        timeout=30,
        interval=0.2,
        message="the rerun's result to be kept",
    )
