"""Contract tests of JSON API v1: the shapes documented in docs/api.md, keyset
pagination, filters, and the error format."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db.models.functions import Now

from taskengine.models import ExecutionLog, Leader, MissedSlot, Schedule, WorkerProcess

pytestmark = pytest.mark.django_db

STR, INT, BOOL, FLOAT = str, int, bool, (int, float)
OPT_STR = (str, type(None))
OPT_INT = (int, type(None))
COUNT = {"value": INT, "exact": BOOL, "kind": STR, "display": STR}
JOB_SUMMARY = {
    "id": INT,
    "task_path": STR,
    "queue": STR,
    "priority": INT,
    "state": STR,
    "tenant": OPT_STR,
    "attempts": INT,
    "max_attempts": INT,
    "enqueued_at": STR,
    "run_after": STR,
    "started_at": OPT_STR,
    "finished_at": OPT_STR,
    "cancel_requested_at": OPT_STR,
    "locked_by": OPT_STR,
    "lease_expires_at": OPT_STR,
}
JOB_DETAIL = {
    **JOB_SUMMARY,
    "backend": STR,
    "args": list,
    "kwargs": dict,
    "return_value": object,
    "unique_key": OPT_STR,
    "timeout_seconds": (float, int, type(None)),
    "schedule": OPT_STR,
    "slot": OPT_STR,
    "acting_user_id": OPT_STR,
    "attempt_log": list,
    "audit": list,
    "actions": dict,
}
ATTEMPT = {
    "attempt": INT,
    "worker_id": STR,
    "started_at": STR,
    "finished_at": OPT_STR,
    "outcome": OPT_STR,
    "error_class": OPT_STR,
    "error_message": STR,
    "traceback": dict,
}
TRACEBACK = {"text": STR, "truncated": BOOL, "length": INT}
AUDIT = {
    "id": INT,
    "actor": STR,
    "action": STR,
    "target_type": STR,
    "target_id": STR,
    "tenant": OPT_STR,
    "state_before": (dict, type(None)),
    "state_after": (dict, type(None)),
    "reason": STR,
    "created_at": STR,
}
WORKER = {
    "worker_id": STR,
    "host": STR,
    "pid": INT,
    "queues": list,
    "concurrency": INT,
    "state": STR,
    "alive": BOOL,
    "started_at": STR,
    "last_heartbeat_at": STR,
    "stopped_at": OPT_STR,
}
LEADER = {
    "name": STR,
    "holder": STR,
    "term": INT,
    "acquired_at": STR,
    "renewed_at": STR,
    "expires_at": STR,
    "live": BOOL,
}
SCHEDULE = {
    "name": STR,
    "task_path": STR,
    "cron": OPT_STR,
    "interval_seconds": (int, type(None)),
    "timezone": STR,
    "queue": STR,
    "tenant": OPT_STR,
    "enabled": BOOL,
    "misfire_policy": STR,
    "last_slot_at": OPT_STR,
    "next_slots": list,
    "last_runs": list,
    "missed_slots": list,
}
BUCKET = {"start": STR, "succeeded": INT, "failed": INT, "cancelled": INT}
STATES = ["queued", "running", "succeeded", "failed", "cancelled"]


def assert_shape(value: dict, shape: dict, where: str = "") -> None:
    assert set(value) == set(shape), f"{where}: keys {sorted(value)} != {sorted(shape)}"
    for key, kind in shape.items():
        assert isinstance(value[key], kind), f"{where}.{key} = {value[key]!r} is not {kind}"


@pytest.fixture
def world(db, jobs):
    failed = jobs["a_failed"]
    ExecutionLog.objects.create(
        job=failed,
        attempt=1,
        worker_id="w1",
        started_at=failed.enqueued_at,
        finished_at=failed.finished_at,
        outcome="failed",
        error_class="ValueError",
        error_message="bad",
        traceback="Traceback ...",
    )
    WorkerProcess.objects.create(worker_id="w1", host="h", pid=1, queues=["default"], concurrency=2)
    Leader.objects.create(name="maintenance", holder="w1", term=3, expires_at=Now() + timedelta(seconds=30))
    cron = Schedule.objects.create(
        name="nightly", task_path="tests.tasks.noop", cron="0 3 * * *", timezone="Europe/Paris", tenant="a"
    )
    Schedule.objects.create(name="often", task_path="tests.tasks.noop", interval_seconds=60, tenant="a")
    MissedSlot.objects.create(schedule=cron, slot=failed.enqueued_at, reason="skip")
    return jobs


def test_summary_shape(client_for, world):
    body = client_for("root").get("/taskengine/api/v1/summary").json()
    assert_shape(
        body,
        {
            "generated_at": STR,
            "gate": dict,
            "counts": dict,
            "oldest_queued_age_seconds": (float, int),
            "throughput": dict,
            "workers": dict,
            "leaders": list,
        },
        "summary",
    )
    assert body["gate"]["ready"] is True
    assert list(body["counts"]["by_state"]) == STATES
    for count in body["counts"]["by_state"].values():
        assert_shape(count, COUNT, "count")
    default = body["counts"]["by_queue"]["default"]
    assert_shape(default, {"queued": dict, "running": dict, "finished_last_hour": dict}, "by_queue")
    assert_shape(default["queued"], COUNT)
    assert default["finished_last_hour"] == {"succeeded": 2, "failed": 2, "cancelled": 2}
    assert (default["queued"]["value"], default["running"]["value"]) == (2, 2)
    assert_shape(body["throughput"], {"bucket_seconds": INT, "since": STR, "until": STR, "buckets": list})
    assert len(body["throughput"]["buckets"]) == 60
    assert_shape(body["throughput"]["buckets"][0], BUCKET, "bucket")
    last = body["throughput"]["buckets"][-1]
    assert (last["succeeded"], last["failed"], last["cancelled"]) == (2, 2, 2)
    assert body["workers"] == {"alive": 1, "listed": 1}
    assert_shape(body["leaders"][0], LEADER, "leader")


def test_jobs_shape_filters_and_keyset_pages(client_for, world):
    client = client_for("root")
    body = client.get("/taskengine/api/v1/jobs?limit=4").json()
    assert_shape(
        body, {"results": list, "next_after": (int, type(None)), "prev_before": (int, type(None)), "count": dict}
    )
    assert_shape(body["count"], COUNT)
    assert body["count"]["value"] == 10 and body["count"]["exact"]
    for row in body["results"]:
        assert_shape(row, JOB_SUMMARY, "job")
    seen = [r["id"] for r in body["results"]]
    assert seen == sorted(seen, reverse=True) and body["prev_before"] is None
    while body["next_after"]:
        body = client.get(f"/taskengine/api/v1/jobs?limit=4&after={body['next_after']}").json()
        seen += [r["id"] for r in body["results"]]
    assert len(seen) == len(set(seen)) == 10
    back = client.get(f"/taskengine/api/v1/jobs?limit=4&before={seen[7]}").json()
    assert [r["id"] for r in back["results"]] == seen[3:7]
    failed = client.get("/taskengine/api/v1/jobs?state=failed&tenant=b").json()["results"]
    assert [r["id"] for r in failed] == [world["b_failed"].pk]


@pytest.mark.parametrize(
    "query", ["state=bogus", "limit=0", "limit=100000", "since=yesterday", "after=1&before=2", "until=9999-12-31"]
)
def test_bad_filter_is_400_with_message(client_for, world, query):
    response = client_for("root").get(f"/taskengine/api/v1/jobs?{query}")
    assert response.status_code == 400
    assert response.json()["error"].startswith("invalid filter")


def test_job_detail_shape(client_for, world):
    job = world["a_failed"]
    body = client_for("alice").get(f"/taskengine/api/v1/jobs/{job.pk}").json()
    assert_shape(body, JOB_DETAIL, "job")
    assert body["actions"] == {"requeue": True, "retry": False, "cancel": False}
    assert_shape(body["attempt_log"][0], ATTEMPT, "attempt")
    assert_shape(body["attempt_log"][0]["traceback"], TRACEBACK, "traceback")


def test_action_response_shape_and_audit_in_detail(client_for, world):
    client = client_for("alice")
    job = world["a_failed"]
    body = client.post(
        f"/taskengine/api/v1/jobs/{job.pk}/requeue", {"reason": "retry after fix"}, content_type="application/json"
    ).json()
    assert_shape(body, {"message": STR, "audit_id": INT, "job": dict})
    assert_shape(body["job"], JOB_SUMMARY)
    assert body["job"]["state"] == "queued"
    audit = client.get(f"/taskengine/api/v1/jobs/{job.pk}").json()["audit"]
    assert_shape(audit[0], AUDIT, "audit")
    assert (audit[0]["action"], audit[0]["reason"], audit[0]["actor"]) == ("requeue", "retry after fix", "alice")
    assert (audit[0]["state_before"]["state"], audit[0]["state_after"]["state"]) == ("failed", "queued")


@pytest.mark.parametrize(
    "action,job_key,status",
    [
        ("requeue", "a_running", 409),
        ("retry", "a_succeeded", 409),
        ("cancel", "a_failed", 409),
        ("cancel", "b_queued", 404),
    ],
)
def test_action_errors_are_json(client_for, world, action, job_key, status):
    response = client_for("alice").post(f"/taskengine/api/v1/jobs/{world[job_key].pk}/{action}")
    assert response.status_code == status
    assert set(response.json()) == {"error"} and response.json()["error"]


def test_missing_job_and_bad_body_errors(client_for, world):
    client = client_for("root")
    assert client.get("/taskengine/api/v1/jobs/999999").json() == {"error": "no job 999999"}
    response = client.post(
        f"/taskengine/api/v1/jobs/{world['a_queued'].pk}/cancel", "not json", content_type="application/json"
    )
    assert response.status_code == 400 and "JSON" in response.json()["error"]


def test_workers_shape(client_for, world):
    body = client_for("alice").get("/taskengine/api/v1/workers").json()
    assert_shape(body, {"generated_at": STR, "workers": list, "leaders": list})
    assert_shape(body["workers"][0], WORKER, "worker")
    assert body["workers"][0]["alive"] is True
    assert_shape(body["leaders"][0], LEADER, "leader")


def test_schedules_shape_and_next_slots(client_for, world):
    body = client_for("alice").get("/taskengine/api/v1/schedules").json()
    assert_shape(body, {"schedules": list})
    rows = {s["name"]: s for s in body["schedules"]}
    for row in rows.values():
        assert_shape(row, SCHEDULE, "schedule")
    nightly = rows["nightly"]
    assert len(nightly["next_slots"]) == 3
    # 03:00 in Paris is 01:00 or 02:00 UTC depending on DST.
    assert all(s[11:16] == "03:00" for s in nightly["next_slots"])
    assert nightly["missed_slots"][0]["reason"] == "skip"
    often = rows["often"]["next_slots"]
    assert len(often) == 3
    assert client_for("bob").get("/taskengine/api/v1/schedules").json() == {"schedules": []}


def test_pages_scan_a_bounded_id_window_and_still_reach_every_match(client_for, world, monkeypatch):
    from taskengine.ops import job_filters as filters

    monkeypatch.setattr(filters, "SCAN_WINDOW", 3)
    client = client_for("root")
    expected = sorted((j.pk for j in world.values() if j.state == "failed"), reverse=True)
    seen, pages, url = [], [], "/taskengine/api/v1/jobs?state=failed"
    while url:
        body = client.get(url).json()
        pages.append(body)
        seen += [r["id"] for r in body["results"]]
        url = f"/taskengine/api/v1/jobs?state=failed&after={body['next_after']}" if body["next_after"] else None
    assert seen == expected
    assert len(pages) >= 3  # 10 ids in windows of 3
    newer, url = [], f"/taskengine/api/v1/jobs?state=failed&before={pages[-1]['prev_before']}"
    while url:
        body = client.get(url).json()
        newer = [r["id"] for r in body["results"]] + newer
        url = f"/taskengine/api/v1/jobs?state=failed&before={body['prev_before']}" if body["prev_before"] else None
    assert newer + [r["id"] for r in pages[-1]["results"]] == expected


QUEUE_STATUS = {
    "name": STR,
    "state": STR,
    "paused": BOOL,
    "paused_at": OPT_STR,
    "paused_by": OPT_STR,
    "pause_reason": STR,
    "declared_in_settings": BOOL,
    "tenant": OPT_STR,
    "queued": dict,
    "running": dict,
    "can_pause": BOOL,
    "can_limit": BOOL,
    "concurrency_limit": OPT_INT,
    "rate": OPT_STR,
}
QUEUE_RECORD = {
    "name": STR,
    "state": STR,
    "paused": BOOL,
    "paused_at": OPT_STR,
    "paused_by": OPT_STR,
    "pause_reason": STR,
    "concurrency_limit": OPT_INT,
    "rate": OPT_STR,
    "tenant": OPT_STR,
}


def test_queues_shape_and_pause_answer(client_for, world):
    client = client_for("root")
    answer = client.post("/taskengine/api/v1/queues/default/pause", {"reason": "r"}, content_type="application/json")
    body = answer.json()
    assert_shape(body, {"message": STR, "audit_id": INT, "queue": dict})
    assert_shape(body["queue"], QUEUE_RECORD, "queue")
    listed = client.get("/taskengine/api/v1/queues").json()
    assert_shape(listed, {"queues": list})
    row = next(q for q in listed["queues"] if q["name"] == "default")
    assert_shape(row, QUEUE_STATUS, "queue status")
    assert_shape(row["queued"], COUNT, "queued")
    assert_shape(row["running"], COUNT, "running")
    assert (row["state"], row["paused"], row["paused_by"], row["pause_reason"]) == ("paused", True, "root", "r")
