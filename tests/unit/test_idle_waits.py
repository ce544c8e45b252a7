"""How long an idle worker waits (taskengine/runtime/idle.py) around a pause and a resume
when nothing wakes it (a polling worker)."""

from __future__ import annotations

from taskengine import queues
from taskengine.runtime.idle import IdleWaits


class HeldQueues:
    """The database's answer to "which of my queues are held?", one per look."""

    def __init__(self, *answers: set[str]) -> None:
        self.answers = list(answers)
        self.retry_at = 0.0

    def call(self, name, function, default=None):
        return self.answers.pop(0)


def idle(db: HeldQueues) -> IdleWaits:
    return IdleWaits(
        queue_names=["demo"],
        database="default",
        backoff_base=0.05,
        max_backoff=2.0,
        db=db,
        woken_on_change=lambda: False,
    )


def test_a_polling_worker_waits_briefly_while_its_queue_is_paused_and_fully_after():
    waits = idle(HeldQueues({"demo"}, set(), set()))
    assert waits.poll_wait(2.0) == queues.PAUSED_POLL_SECONDS  # paused
    assert waits.poll_wait(2.0) == queues.PAUSED_POLL_SECONDS  # resumed since the last look: once more
    assert waits.poll_wait(2.0) == 2.0  # nothing held any more


def test_a_resume_between_an_empty_claim_and_the_look_at_the_queues_costs_no_full_back_off():
    """Fails on the wait that looked only at the queues now: the claim ran while demo was
    paused and came back empty, the resume committed, the look found nothing held, and
    the worker slept the whole back-off (2 s) with the resumed jobs due."""
    waits = idle(HeldQueues({"demo"}, set()))
    waits.poll_wait(2.0)  # a wait while paused
    # ... the next claim runs, still paused: empty; the resume commits now ...
    assert waits.poll_wait(2.0) <= queues.PAUSED_POLL_SECONDS


def test_short_waits_do_not_look_at_the_queues():
    waits = idle(HeldQueues())  # any look would fail: no answer left
    assert waits.poll_wait(0.1) == 0.1
