from django.contrib.auth.models import User
from django.db import transaction

from taskengine.compat import task  # Django 6.1: from django.tasks import task


@task(max_attempts=3, retry_backoff=60, takes_context=True)
def send_welcome_email(context, user_id: int) -> str:
    user = User.objects.get(pk=user_id)
    if not user.email:
        raise ValueError(f"user {user_id} has no email address")
    user.last_name = f"welcomed on attempt {context.attempt}"
    user.save(update_fields=["last_name"])
    return user.email


def sign_up(username: str, email: str = "") -> User:
    with transaction.atomic():
        user = User.objects.create(username=username, email=email)
        send_welcome_email.using(unique_key=f"welcome-{user.pk}").enqueue(user.pk)
    return user


@task
def purge_inactive_users() -> int:
    deleted, _ = User.objects.filter(is_active=False).delete()
    return deleted


@task(timeout=0.5, max_attempts=1)
def crunch_numbers(seconds: float) -> str:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return "done"
