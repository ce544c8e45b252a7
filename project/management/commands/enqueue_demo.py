"""Enqueue a handful of demo jobs that show the engine's behaviour: successes, a job
that succeeds on its third attempt, one that fails for good, an async job, a timeout,
a delayed job and a bulk batch."""

from datetime import timedelta

from django.core.management.base import BaseCommand
from django.utils import timezone

from project import tasks


class Command(BaseCommand):
    help = "Enqueue demo jobs on the demo queue."

    def handle(self, *args, **options):
        results = [
            tasks.add.enqueue(2, 3),
            tasks.fails_twice.enqueue(),
            tasks.always_fails.enqueue(),
            tasks.async_sleep.enqueue(0.5),
            tasks.too_slow.enqueue(),
            tasks.add.using(run_after=timezone.now() + timedelta(seconds=10)).enqueue(10, 20),
            tasks.add.using(unique_key="demo-reminder").enqueue(1, 1),
        ]
        results += tasks.add.enqueue_many([(i, i) for i in range(20)])
        self.stdout.write(f"enqueued {len(results)} demo jobs (ids {results[0].id}…{results[-1].id})")
