"""Stateful property test of the engine against the real database (docs/reliability.md).

Hypothesis's RuleBasedStateMachine generates sequences of the engine's own writes —
enqueue, claim, heartbeat, finish, graceful release, recovery, retention, operator
cancel / requeue / retry-now — from several simulated workers (distinct worker ids,
registered like runworker registers), with the database clock moved by
``advance_clock`` instead of sleeps. After every step the invariants are checked with
SQL against the real tables.

The Python side keeps only what the invariants need: the tokens (job, attempt, worker)
handed out, what each simulated worker believes it holds, the ids ever created and
the ids retention deleted, the number of operator writes made, the last fencing token
and terminal state seen per job. Everything else is read from the database.

Time: the database clock also moves on its own while the test runs, so every rule
that expects something of a deadline (a lease, a run_after, a heartbeat age, a
retention age) predicts only the cases at least MARGIN seconds away from it and
accepts either result inside that band. Whatever is stale (expired, taken over,
finished) stays stale as time goes on, so "a stale token never writes" is asserted
without any band.

Budget: TASKENGINE_PROPERTY_PROFILE=ci (the default, about a minute per database on
the 2-core machine) or =local (20 times as many examples). Reproducing a failure:
docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from hypothesis import HealthCheck, event, seed, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from taskengine import store
from taskengine.leader import dead_workers, recovery, retention
from taskengine.leader.election import Elector, LeaderLease, NotLeader
from taskengine.models import ExecutionLog, Job, Leader, MissedSlot, OperatorAction, Schedule, WorkerProcess
from taskengine.ops import operations
from taskengine.runtime import heartbeats
from taskengine.runtime.execution import JobCancelled, JobTimedOut, LeaseLost, RunningJob, outcome_for
from tests import tasks

from .clock import advance_clock

ROOT = Path(__file__).resolve().parents[2]

_COMMON = dict(
    deadline=None,  # a step's time is the database's; Hypothesis' per-example deadline would flake
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    database=DirectoryBasedExampleDatabase(str(ROOT / "var" / "hypothesis")),
)
settings.register_profile("ci", max_examples=20, stateful_step_count=80, **_COMMON)
settings.register_profile("local", max_examples=400, stateful_step_count=80, **_COMMON)
PROFILE = os.environ.get("TASKENGINE_PROPERTY_PROFILE", "ci")

MARGIN = 5.0  # seconds: predictions are made only this far from a deadline
WORKER_SLOTS = 2
DEAD_AFTER = 60.0  # WORKER_DEAD_AFTER_SECONDS for the machine's maintenance
LEADER_TTL = 60.0
QUEUES = ["default", "demo"]
TERMINAL = {"succeeded", "failed", "cancelled"}
OPEN = {"queued", "running"}


# --- generated values ----------------------------------------------------------------

# Any text, NUL and lone surrogates included: the engine must store around them
# (tests/property/test_known_bugs.py has their smallest cases).
TEXT = st.text(max_size=12)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=6,
)


class Unstorable:
    """A return value json cannot encode."""

    def __repr__(self) -> str:
        return "Unstorable()"


@dataclass(frozen=True, eq=False)
class HandlerResult:
    """What a simulated handler did; turned into an Outcome by execution.outcome_for."""

    kind: str  # return | raise | timeout | cancelled | lease_lost
    value: Any = None
    message: str = ""

    def outcome(self, claimed: store.ClaimedJob) -> store.Outcome:
        running = RunningJob(claimed)
        if self.kind == "return":
            return outcome_for(running, self.value, None)
        error = {"raise": RuntimeError, "timeout": JobTimedOut, "cancelled": JobCancelled, "lease_lost": LeaseLost}[
            self.kind
        ](self.message)
        return outcome_for(running, None, error)


HANDLER_RESULTS = st.one_of(
    st.builds(HandlerResult, st.just("return"), JSON_VALUES),
    st.builds(
        HandlerResult,
        st.just("return"),
        st.sampled_from([Unstorable(), float("nan"), float("inf"), "nul\x00", {"k": ["\x00"]}, {"x": Unstorable()}]),
    ),
    st.builds(HandlerResult, st.just("raise"), st.none(), TEXT),
    st.builds(HandlerResult, st.sampled_from(["timeout", "cancelled", "lease_lost"]), st.none(), TEXT),
)


@dataclass(frozen=True)
class JobSpec:
    """Options of one enqueued job."""

    max_attempts: int = 3
    retry_backoff: float = 0.0
    on_lease_expired: str = "retry"
    unique_key: str | None = None
    priority: int = 0
    queue: str = "default"
    delay: int | None = None  # run_after = database now + delay

    def task(self, now: datetime):
        task = tasks.add.using(
            max_attempts=self.max_attempts,
            retry_backoff=self.retry_backoff,
            priority=self.priority,
            queue_name=self.queue,
            unique_key=self.unique_key,
            run_after=now + timedelta(seconds=self.delay) if self.delay else None,
        )
        return replace(task, on_lease_expired=self.on_lease_expired)


JOB_SPECS = st.builds(
    JobSpec,
    max_attempts=st.integers(1, 3),
    retry_backoff=st.sampled_from([0.0, 1.0, 20.0]),
    on_lease_expired=st.sampled_from(["retry", "fail"]),
    unique_key=st.sampled_from([None, None, "k1", "k2"]),
    priority=st.integers(-1, 1),
    queue=st.sampled_from(QUEUES),
    delay=st.sampled_from([None, None, 30, 600]),
)
# Mostly steps around lease and heartbeat lengths, sometimes hours or days (retention).
CLOCK_STEPS = st.one_of(
    st.integers(1, 10), st.integers(1, 10), st.integers(1, 70), st.sampled_from([130, 600, 3600, 86400, 8 * 86400])
)
LEASES = st.sampled_from([20.0, 60.0, 180.0])
RETENTION_DAYS = st.sampled_from([None, 0, 1, 7])


@dataclass(frozen=True, eq=False)
class Token:
    """What a simulated worker holds after a claim: the fencing token and the job."""

    worker_id: str
    claimed: store.ClaimedJob = field(repr=False)

    @property
    def as_held(self) -> tuple[int, int]:
        return (self.claimed.id, self.claimed.attempt)

    def __repr__(self) -> str:
        return f"Token({self.worker_id!r}, job={self.claimed.id}, attempt={self.claimed.attempt})"


# --- reading the database ------------------------------------------------------------


def now() -> datetime:
    return store.db_now()


def job_row(job_id: int) -> dict[str, Any] | None:
    return Job.objects.filter(pk=job_id).values().first()


def attempt_rows(job_id: int) -> list[dict[str, Any]]:
    return list(ExecutionLog.objects.filter(job_id=job_id).order_by("attempt").values())


def attempt_row(job_id: int, attempt: int) -> dict[str, Any] | None:
    return ExecutionLog.objects.filter(job_id=job_id, attempt=attempt).values().first()


def attempt_row_in(snap: tuple[dict | None, list[dict]], attempt: int) -> dict[str, Any] | None:
    return next((r for r in snap[1] if r["attempt"] == attempt), None)


def snapshot(job_id: int) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    return job_row(job_id), attempt_rows(job_id)


def as_floats(value: Any) -> Any:
    """JSON with every number as a float: jsonb spells a large float as an integer."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):
        return [as_floats(v) for v in value]
    return {k: as_floats(v) for k, v in value.items()}


def lease_status(token: Token, at: datetime) -> str:
    """live / stale / unsure for ``token`` at database time ``at``."""
    row = job_row(token.claimed.id)
    if (
        row is None
        or row["state"] != "running"
        or row["attempts"] != token.claimed.attempt
        or row["locked_by"] != token.worker_id
        or row["lease_expires_at"] <= at
    ):
        return "stale"
    return "live" if row["lease_expires_at"] > at + timedelta(seconds=MARGIN) else "unsure"


class FencedBatch:
    """One fenced write (heartbeat, finish, release) of some tokens: what each token's
    lease was just before it, and the check afterwards that stale tokens wrote nothing."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.at = now()
        self.status = {t: lease_status(t, self.at) for t in tokens}
        self.before = {t.claimed.id: snapshot(t.claimed.id) for t in tokens}

    def winners(self, won: Any, what: str) -> list[Token]:
        """The tokens whose write took effect (``won``: the job ids the store reported).
        Asserts that every live token won, and that a stale one changed nothing: not
        its job when no other token of the batch holds that job, and never its own
        attempt row."""
        won = set(won)
        winners = []
        for t in self.tokens:
            job_id, status = t.claimed.id, self.status[t]
            if status == "unsure":  # within MARGIN of its lease's end: either may happen
                row = job_row(job_id)
                status = (
                    "live" if job_id in won and row is not None and row["attempts"] == t.claimed.attempt else "stale"
                )
            event(f"{what}: {status} token")
            if status == "live":
                assert job_id in won, f"a {what} of a live lease was refused: {t}"
                winners.append(t)
                continue
            holders = [o for o in self.tokens if o is not t and o.claimed.id == job_id and self.status[o] != "stale"]
            if holders:  # the job may change through the live token; this attempt's row may not
                assert attempt_row(job_id, t.claimed.attempt) == attempt_row_in(
                    self.before[job_id], t.claimed.attempt
                ), f"a stale {what} changed attempt {t.claimed.attempt} of job {job_id} (batch {self.tokens})"
            else:
                assert job_id not in won, f"a stale token's {what} won: {t}"
                assert snapshot(job_id) == self.before[job_id], f"a stale {what} changed job {job_id}: {t}"
        return winners


class EngineMachine(RuleBasedStateMachine):
    jobs = Bundle("jobs")
    tokens = Bundle("tokens")

    # --- setup -----------------------------------------------------------------------

    def __init__(self) -> None:
        super().__init__()
        # A fresh engine per example (pytest-django flushes only after the test).
        with connection.cursor() as cursor:
            for model in (ExecutionLog, Job, OperatorAction, WorkerProcess, Leader, MissedSlot, Schedule):
                cursor.execute(f"DELETE FROM {model._meta.db_table}")
        self.operator = get_user_model().objects.filter(
            username="property-operator"
        ).first() or get_user_model().objects.create_superuser("property-operator", password="x")
        self.generation = [0] * WORKER_SLOTS
        self.held: dict[str, set[Token]] = {}
        for slot in range(WORKER_SLOTS):
            self._register(slot)
        # A still monotonic clock: the leader's trust never runs out on its own, only
        # through the database (advance_clock past its TTL: renew fails, a new term).
        self.elector = Elector("default", "property-leader", ttl=LEADER_TTL, renew_every=5, margin=2, clock=lambda: 0.0)
        self.old_leases: list[LeaderLease] = []
        self.created: set[int] = set()
        self.deleted: set[int] = set()
        self.operator_writes = 0
        self.last_attempts: dict[int, int] = {}
        self.terminal_seen: dict[int, tuple[str, Any]] = {}

    def _worker(self, slot: int) -> str:
        return f"w{slot}.{self.generation[slot]}"

    def _register(self, slot: int) -> None:
        worker_id = self._worker(slot)
        heartbeats.register("default", worker_id, QUEUES, concurrency=4)
        self.held.setdefault(worker_id, set())

    def _lease(self) -> LeaderLease:
        before = self.elector.lease()
        assert self.elector.step(), "the only candidate must always win the election"
        lease = self.elector.lease()
        if before is not None and before != lease:
            self.old_leases.append(before)
        return lease

    # --- enqueue ---------------------------------------------------------------------

    @initialize(target=jobs, specs=st.lists(JOB_SPECS, min_size=1, max_size=6))
    def enqueue_first(self, specs: list[JobSpec]):
        return self.enqueue(specs)

    @rule(target=jobs, specs=st.lists(JOB_SPECS, min_size=1, max_size=4))
    def enqueue(self, specs: list[JobSpec]):
        at = now()
        calls = [(spec.task(at), [i, len(specs)], {}) for i, spec in enumerate(specs)]
        if len(calls) == 1:
            task, args, kwargs = calls[0]
            results = [task.enqueue(*args, **kwargs)]
        else:
            results = calls[0][0].get_backend().enqueue_many(calls)
        new = []
        for spec, result in zip(specs, results, strict=True):
            job_id = int(result.id)
            row = job_row(job_id)
            assert row is not None
            if job_id in self.created or job_id in new:
                # The live holder of the unique key was returned instead of a new job.
                assert spec.unique_key is not None and row["unique_key"] == spec.unique_key
                assert row["state"] in OPEN, row
            else:
                assert (row["state"], row["attempts"], row["unique_key"]) == ("queued", 0, spec.unique_key)
                new.append(job_id)
        self.created.update(new)
        return multiple(*new)

    @rule(spec=JOB_SPECS)
    def enqueue_rolled_back(self, spec: JobSpec) -> None:
        """A job enqueued in a transaction that rolls back never exists."""
        before = set(Job.objects.values_list("id", flat=True))
        with pytest.raises(_Rollback), transaction.atomic():
            spec.task(now()).enqueue(0, 0)
            raise _Rollback
        assert set(Job.objects.values_list("id", flat=True)) == before

    # --- workers ---------------------------------------------------------------------

    @rule(
        target=tokens,
        slot=st.integers(0, WORKER_SLOTS - 1),
        limit=st.integers(1, 3),
        lease=LEASES,
        queues=st.sampled_from([QUEUES, QUEUES, ["default"], ["demo"]]),
    )
    def claim(self, slot: int, limit: int, lease: float, queues: list[str]):
        worker_id = self._worker(slot)
        queued = dict(Job.objects.filter(state="queued").values_list("id", "attempts"))
        claimed = store.claim_jobs(connection, worker_id=worker_id, queues=queues, limit=limit, lease_seconds=lease)
        at = now()
        assert len(claimed) <= limit
        for job in claimed:
            assert job.id in queued, f"claimed job {job.id} was not queued"
            assert job.attempt == queued[job.id] + 1
            row = job_row(job.id)
            assert (row["state"], row["locked_by"], row["attempts"]) == ("running", worker_id, job.attempt)
            assert row["run_after"] <= at, "a job was claimed before it was due"
            [log] = [r for r in attempt_rows(job.id) if r["attempt"] == job.attempt]
            assert (log["worker_id"], log["finished_at"], log["outcome"]) == (worker_id, None, None)
        if len(claimed) < limit:
            overdue = Job.objects.filter(state="queued", queue__in=queues, run_after__lt=at - timedelta(seconds=MARGIN))
            assert not overdue.exists(), "a due job was left behind by a claim that had room"
        event(f"claim: {len(claimed)} of {limit}")
        tokens = [Token(worker_id, job) for job in claimed]
        self.held[worker_id].update(tokens)
        return multiple(*tokens)

    @rule(slot=st.integers(0, WORKER_SLOTS - 1), lease=LEASES)
    def heartbeat(self, slot: int, lease: float) -> None:
        """What a worker's heartbeat does: its registry row, then its leases."""
        worker_id = self._worker(slot)
        if not heartbeats.heartbeat("default", worker_id, "running"):
            self._register(slot)  # marked dead meanwhile: a live worker registers again
        self._extend(worker_id, self._held(worker_id), lease)

    @rule(token=tokens, lease=LEASES)
    def heartbeat_any_token(self, token: Token, lease: float) -> None:
        """A paused or partitioned worker coming back heartbeats what it used to hold."""
        self._extend(token.worker_id, [token], lease)

    def _held(self, worker_id: str) -> list[Token]:
        return sorted(self.held.get(worker_id, ()), key=lambda t: t.as_held)

    def _extend(self, worker_id: str, held: list[Token], lease: float) -> None:
        batch = FencedBatch(held)
        kept = store.extend_leases(connection, worker_id=worker_id, held=[t.as_held for t in held], lease_seconds=lease)
        for t in batch.winners(kept, "heartbeat"):
            row = job_row(t.claimed.id)
            assert kept[t.claimed.id] == (row["cancel_requested_at"] is not None)
            assert row["lease_expires_at"] > batch.at
        for t in held:
            if t.claimed.id not in kept:
                self.held.get(worker_id, set()).discard(t)  # the worker gives up a lost lease

    @rule(token=tokens, result=HANDLER_RESULTS)
    def finish(self, token: Token, result: HandlerResult) -> None:
        """Any token's outcome, written: a stale one (expired, recovered, finished,
        taken over) must change nothing."""
        self._finish(token.worker_id, [(token, result)])

    @rule(slot=st.integers(0, WORKER_SLOTS - 1), results=st.lists(HANDLER_RESULTS, min_size=1, max_size=3))
    def finish_held(self, slot: int, results: list[HandlerResult]) -> None:
        """A worker writes the outcomes of what it holds, in one batch as it does: as many
        of the drawn results as it holds jobs (zip stops at the shorter on purpose)."""
        worker_id = self._worker(slot)
        self._finish(worker_id, list(zip(self._held(worker_id), results, strict=False)))

    def _finish(self, worker_id: str, pairs: list[tuple[Token, HandlerResult]]) -> None:
        outcomes = {t: r.outcome(t.claimed) for t, r in pairs}
        batch = FencedBatch(list(outcomes))
        won = store.finish_jobs(connection, worker_id=worker_id, outcomes=list(outcomes.values()))
        for t in outcomes:
            self.held.get(worker_id, set()).discard(t)
        for t in batch.winners(won, "finish"):
            outcome, job_id = outcomes[t], t.claimed.id
            old, row = batch.before[job_id][0], job_row(job_id)
            expected = outcome.next_state
            if expected == "queued" and old["cancel_requested_at"] is not None:
                expected = "cancelled"
            event(f"finish: {outcome.outcome} -> {expected}")
            assert (row["state"], row["locked_by"], row["lease_expires_at"]) == (expected, None, None)
            assert won[job_id][0] == expected
            assert row["attempts"] == t.claimed.attempt
            if outcome.return_value is not None:
                assert as_floats(row["return_value"]) == as_floats(json.loads(outcome.return_value))
            log = attempt_rows(job_id)[-1]
            assert log["attempt"] == t.claimed.attempt and log["finished_at"] is not None
            assert log["outcome"] == ("cancelled" if expected == "cancelled" else outcome.outcome)
            assert (log["error_class"], log["error_message"]) == (outcome.error_class, outcome.error_message)

    @rule(slot=st.integers(0, WORKER_SLOTS - 1))
    def sigterm(self, slot: int) -> None:
        """Graceful shutdown: release what the worker holds, mark it stopped; a new
        worker process (a new worker id) takes the slot."""
        worker_id = self._worker(slot)
        held = self._held(worker_id)
        self.held.pop(worker_id, None)
        batch = FencedBatch(held)
        released = store.release_jobs(connection, worker_id=worker_id, held=[t.as_held for t in held])
        assert len(released) == len(set(released))
        for t in batch.winners(released, "release"):
            job_id = t.claimed.id
            (old, _), (row, logs) = batch.before[job_id], snapshot(job_id)
            # A requested cancel ends the job cancelled; otherwise it goes back to the queue.
            cancelled = old["cancel_requested_at"] is not None
            assert (row["state"], row["locked_by"]) == ("cancelled" if cancelled else "queued", None)
            assert row["attempts"] == old["attempts"]
            if not cancelled:
                assert row["max_attempts"] == old["max_attempts"] + 1, "a released attempt must not count"
            assert (logs[-1]["attempt"], logs[-1]["outcome"]) == (
                t.claimed.attempt,
                "cancelled" if cancelled else "released",
            )
        heartbeats.mark_stopped("default", worker_id)
        self.generation[slot] += 1
        self._register(slot)

    # --- maintenance -----------------------------------------------------------------

    @rule(limit=st.sampled_from([1, 2, 500]))
    def maintenance(self, limit: int) -> None:
        """The leader's tick: mark dead workers, then recover expired or orphaned leases."""
        lease = self._lease()
        dead_workers.run_once("default", lease, dead_after=DEAD_AFTER)
        at = now()
        running = {r["id"]: r for r in Job.objects.filter(state="running").values()}
        workers = {w["worker_id"]: w for w in WorkerProcess.objects.values()}

        def worker_dead(worker_id: str, margin: float) -> bool:
            """Known dead with ``margin`` seconds to spare. A worker without a row (pruned
            while it was away; it registers again at its next heartbeat) is not known
            dead: only its leases' expiry recovers its jobs."""
            w = workers.get(worker_id)
            return w is not None and (
                w["state"] in ("dead", "stopped")
                or w["last_heartbeat_at"] < at - timedelta(seconds=DEAD_AFTER + margin)
            )

        must = {i for i, r in running.items() if r["lease_expires_at"] <= at or worker_dead(r["locked_by"], MARGIN)}
        must_not = {
            i
            for i, r in running.items()
            if r["lease_expires_at"] > at + timedelta(seconds=MARGIN) and not worker_dead(r["locked_by"], -MARGIN)
        }
        recovered = recovery.run_once("default", lease=lease, limit=limit, dead_after=DEAD_AFTER)
        ids = [r.id for r in recovered]
        assert len(ids) == len(set(ids)) and len(ids) <= limit
        assert not set(ids) & must_not, f"recovery took live leases of live workers: {set(ids) & must_not}"
        if limit >= len(running):
            assert must <= set(ids), f"recovery left expired or orphaned leases: {must - set(ids)}"
        for r in recovered:
            event(f"recovery: -> {r.state}")
            old = running[r.id]
            assert (r.attempt, r.worker_id) == (old["attempts"], old["locked_by"])
            if old["cancel_requested_at"] is not None:
                expected = "cancelled"
            elif old["attempts"] >= old["max_attempts"] or old["on_lease_expired"] == "fail":
                expected = "failed"
            else:
                expected = "queued"
            row, logs = snapshot(r.id)
            assert (r.state, row["state"], row["locked_by"]) == (expected, expected, None)
            assert (logs[-1]["attempt"], logs[-1]["outcome"]) == (old["attempts"], "lost")

    @rule(
        days=st.fixed_dictionaries(dict.fromkeys(sorted(TERMINAL), RETENTION_DAYS)),
        batch_size=st.integers(1, 3),
        max_batches=st.integers(1, 3),
    )
    def retention(self, days: dict[str, float | None], batch_size: int, max_batches: int) -> None:
        lease = self._lease()
        before = {r["id"]: r for r in Job.objects.values("id", "state", "finished_at")}
        start = now()
        deleted = retention.run_once("default", lease, days=days, batch_size=batch_size, max_batches=max_batches)
        end = now()
        vanished = set(before) - set(Job.objects.values_list("id", flat=True))
        cap = batch_size * max_batches
        for state, keep in days.items():
            gone = {i for i in vanished if before[i]["state"] == state}
            if keep is None:
                assert state not in deleted and not gone
                continue
            age = timedelta(days=keep)
            of_state = [r for r in before.values() if r["state"] == state]
            surely_old = sum(1 for r in of_state if r["finished_at"] < start - age)
            maybe_old = sum(1 for r in of_state if r["finished_at"] < end - age)
            assert deleted[state] == len(gone)
            assert min(surely_old, cap) <= len(gone) <= min(maybe_old, cap), (state, surely_old, maybe_old, gone)
        for i in vanished:
            assert before[i]["state"] in TERMINAL, f"retention deleted live job {i}"
            assert before[i]["finished_at"] < end - timedelta(days=days[before[i]["state"]])
            self.terminal_seen.pop(i, None)
        self.deleted |= vanished
        event(f"retention: {'some' if vanished else 'none'} deleted")

    @precondition(lambda self: bool(self.old_leases))
    @rule()
    def deposed_leader_writes_nothing(self) -> None:
        stale = self.old_leases[0]
        jobs_before = list(Job.objects.order_by("id").values())
        with pytest.raises(NotLeader):
            retention.run_once("default", stale, days={"succeeded": 0, "failed": 0, "cancelled": 0})
        assert recovery.run_once("default", lease=stale, dead_after=0) == []
        assert list(Job.objects.order_by("id").values()) == jobs_before

    @rule(seconds=CLOCK_STEPS)
    def advance(self, seconds: int) -> None:
        advance_clock(seconds)
        delta = timedelta(seconds=seconds)
        self.terminal_seen = {i: (s, f - delta) for i, (s, f) in self.terminal_seen.items()}

    # --- operators -------------------------------------------------------------------

    def _operate(self, action: str, job_id: int) -> tuple[dict | None, dict | None, bool]:
        """Run ``action``; returns (row before, row after, done)."""
        before = snapshot(job_id)
        try:
            operations.perform(action, job_id, actor=self.operator, reason=f"property test {action}")
        except operations.JobNotFound:
            assert job_id in self.deleted, f"job {job_id} vanished without retention"
            return None, None, False
        except operations.OperationRefused:
            assert snapshot(job_id) == before, f"a refused {action} changed job {job_id}"
            return before[0], before[0], False
        self.operator_writes += 1
        event(f"operator: {action} done")
        return before[0], job_row(job_id), True

    @rule(job_id=jobs)
    def cancel(self, job_id: int) -> None:
        old, new, done = self._operate("cancel", job_id)
        if old is None:
            return
        allowed = old["state"] == "queued" or (old["state"] == "running" and old["cancel_requested_at"] is None)
        assert done == allowed, (old["state"], done)
        if not done:
            return
        assert new["cancel_requested_at"] is not None
        if old["state"] == "queued":
            assert new["state"] == "cancelled" and new["finished_at"] is not None
        else:
            assert (new["state"], new["locked_by"], new["attempts"]) == ("running", old["locked_by"], old["attempts"])

    @rule(job_id=jobs)
    def requeue(self, job_id: int) -> None:
        old, new, done = self._operate("requeue", job_id)
        if old is None:
            return
        key_taken = (
            old["unique_key"] is not None
            and Job.objects.filter(unique_key=old["unique_key"], state__in=OPEN).exclude(pk=job_id).exists()
        )
        assert done == (old["state"] in ("failed", "cancelled") and not key_taken), (old["state"], done)
        if not done:
            return
        self.terminal_seen.pop(job_id, None)
        assert (new["state"], new["finished_at"], new["return_value"], new["cancel_requested_at"]) == (
            "queued",
            None,
            None,
            None,
        )
        assert (new["attempts"], new["max_attempts"]) == (old["attempts"], old["attempts"] + 1)
        assert new["run_after"] <= now()

    @rule(job_id=jobs)
    def retry_now(self, job_id: int) -> None:
        at = now()
        old, new, done = self._operate("retry", job_id)
        if old is None:
            return
        if old["state"] != "queued" or old["run_after"] <= at:
            assert not done
        elif old["run_after"] > at + timedelta(seconds=MARGIN):
            assert done
        if done:
            assert new["state"] == "queued" and new["run_after"] <= now()

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def the_tables_hold_the_engine_invariants(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id, state, attempts, max_attempts, locked_by, lease_expires_at IS NOT NULL,"
                " finished_at, priority, unique_key FROM taskengine_job"
            )
            jobs = {r[0]: r for r in cursor.fetchall()}
            cursor.execute(
                "SELECT job_id, attempt, worker_id, finished_at IS NOT NULL, outcome"
                " FROM task_execution_logs ORDER BY job_id, attempt"
            )
            logs: dict[int, list[tuple]] = {}
            for log in cursor.fetchall():
                logs.setdefault(log[0], []).append(log)
            cursor.execute("SELECT count(*) FROM taskengine_operator_action")
            audit_rows = cursor.fetchone()[0]

        # Nothing but retention deletes; a rolled-back enqueue left nothing behind.
        assert set(jobs) == self.created - self.deleted, {
            "missing": self.created - self.deleted - set(jobs),
            "unexpected": set(jobs) - self.created,
        }
        assert set(logs) <= set(jobs), f"attempt rows without their job: {set(logs) - set(jobs)}"
        assert audit_rows == self.operator_writes, "every operator write has exactly one audit row"
        live_keys = [j[8] for j in jobs.values() if j[1] in OPEN and j[8] is not None]
        assert len(live_keys) == len(set(live_keys)), f"two live jobs share a unique key: {live_keys}"

        for job_id, (_, state, attempts, max_attempts, locked_by, leased, finished_at, priority, _) in jobs.items():
            job = jobs[job_id]
            # The CHECK constraints (enforced by the database; checked here as derived facts).
            assert state in OPEN | TERMINAL, job
            assert (state == "running") == (locked_by is not None) == bool(leased), job
            assert (state in TERMINAL) == (finished_at is not None), job
            assert max_attempts >= 1 and attempts <= max_attempts, job
            assert -100 <= priority <= 100, job
            # The fencing token only grows.
            assert attempts >= self.last_attempts.get(job_id, 0), f"job {job_id}'s attempt number went back"
            self.last_attempts[job_id] = attempts
            # One attempt row per attempt (every terminal job that ran has its rows);
            # exactly the running attempt is open, and it is the lease holder's.
            rows = logs.get(job_id, [])
            assert [r[1] for r in rows] == list(range(1, attempts + 1)), (job, rows)
            open_rows = [r for r in rows if not r[3]]
            if state == "running":
                assert [(r[1], r[2]) for r in open_rows] == [(attempts, locked_by)], (job, rows)
            else:
                assert open_rows == [], f"job {job_id} is {state} with an open attempt: {rows}"
            assert all(r[4] is not None for r in rows if r[3]), f"a closed attempt without an outcome: {rows}"
            # A terminal job stays as it ended until an operator requeues it.
            finished = store.to_datetime(finished_at)
            if job_id in self.terminal_seen:
                assert (state, finished) == self.terminal_seen[job_id], f"terminal job {job_id} moved: {job}"
            elif state in TERMINAL:
                self.terminal_seen[job_id] = (state, finished)


class _Rollback(Exception):
    pass


@pytest.mark.django_db(transaction=True)
def test_engine_state_machine():
    chosen = os.environ.get("TASKENGINE_PROPERTY_SEED")
    run_seed = int(chosen) if chosen else random.SystemRandom().randrange(2**32)
    print(f"property machine: profile {PROFILE}, seed {run_seed} (TASKENGINE_PROPERTY_SEED={run_seed} runs it again)")
    try:
        run_state_machine_as_test(seed(run_seed)(EngineMachine), settings=settings(settings.get_profile(PROFILE)))
    except BaseException as failure:
        failure.add_note(
            f"property machine seed: TASKENGINE_PROPERTY_SEED={run_seed} "
            f"TASKENGINE_PROPERTY_PROFILE={PROFILE} (see docs/reliability.md)"
        )
        raise
