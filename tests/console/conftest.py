"""Fixtures for the console tests: users with and without permissions in two tenants,
and jobs of both tenants in every state."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.db.models.functions import Now
from django.test import Client

from taskengine.models import Job, TenantMembership

JOB_PERMS = [
    "requeue_job",
    "retry_job",
    "cancel_job",
    "view_job",
    "view_executionlog",
    "view_operatoraction",
    "view_schedule",
    "view_workerprocess",
    "view_leader",
    "view_missedslot",
    "view_backfill_report",
    "view_queue",
]


def make_job(state: str = "queued", tenant: str | None = "a", **fields) -> Job:
    """A job row in ``state`` that satisfies the table's CHECK constraints."""
    values = {"task_path": "tests.tasks.add", "args": [1, 2], "tenant": tenant, "state": state, "max_attempts": 3}
    if state == "running":
        values.update(
            locked_by="worker-x",
            lease_expires_at=Now() + timedelta(minutes=5),
            attempts=1,
            started_at=Now(),
            last_attempted_at=Now(),
        )
    elif state in ("succeeded", "failed", "cancelled"):
        values.update(finished_at=Now(), attempts=1 if state != "cancelled" else 0)
        if state == "failed":
            values.update(attempts=3)
    values.update(fields)
    job = Job.objects.create(**values)
    job.refresh_from_db()
    return job


def make_staff(username: str, tenants: list[str], perms: list[str] = JOB_PERMS) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="taskengine", codename__in=perms))
    for tenant in tenants:
        TenantMembership.objects.create(user=user, tenant=tenant)
    return user


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The default PBKDF2 costs ~0.3 s per user; these tests create five users each.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def users(db):
    return {
        "root": User.objects.create_superuser("root", password="pw"),
        "alice": make_staff("alice", ["a"]),  # tenant a, every job permission
        "bob": make_staff("bob", ["b"]),  # tenant b, every job permission
        "viewer": make_staff("viewer", ["a"], perms=["view_job"]),  # tenant a, no action permission
        "outsider": User.objects.create_user("outsider", password="pw"),  # active, not staff
    }


@pytest.fixture
def jobs(db):
    return {
        f"{tenant}_{state}": make_job(state, tenant)
        for tenant in ("a", "b")
        for state in ("queued", "running", "succeeded", "failed", "cancelled")
    }


@pytest.fixture
def client_for(users):
    def login(name: str, *, csrf: bool = False) -> Client:
        client = Client(enforce_csrf_checks=csrf)
        client.force_login(users[name])
        return client

    return login
