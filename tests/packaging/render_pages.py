"""Run inside a project made by ``django-admin startproject`` with the installed wheel
(tests/packaging/test_wheel_install.py copies this file there): render every console
page and the admin's job list as a superuser, and print what was seen as one JSON object.

A template error raises here (the test client re-raises exceptions from views), so the
script fails instead of printing."""

import json
import os
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "myproject.settings")
django.setup()

# The imports below need the app registry that django.setup() just loaded.
from django.contrib.auth import get_user_model  # noqa: E402 - after django.setup()
from django.contrib.staticfiles import finders  # noqa: E402 - after django.setup()
from django.template.loader import get_template  # noqa: E402 - after django.setup()
from django.test import Client  # noqa: E402 - after django.setup()
from django.test.utils import setup_test_environment  # noqa: E402 - after django.setup()

import taskengine  # noqa: E402 - after django.setup()
from taskengine.models import ExecutionLog, Job  # noqa: E402 - after django.setup()

setup_test_environment()  # allows the test client's host, keeps rendered templates
client = Client(raise_request_exception=True)
client.force_login(get_user_model().objects.get(username=sys.argv[1]))
job = Job.objects.get()
pages = [
    "/taskengine/",
    "/taskengine/jobs/",
    f"/taskengine/jobs/{job.pk}/",
    "/taskengine/workers/",
    "/taskengine/schedules/",
    "/taskengine/audit/",
    "/taskengine/reconcile/",
    "/taskengine/backfill/",
    "/admin/taskengine/job/",
    f"/admin/taskengine/job/{job.pk}/change/",
]
statuses = {}
for url in pages:
    response = client.get(url)
    statuses[url] = response.status_code
print(
    json.dumps(
        {
            "statuses": statuses,
            "job": {
                "task_path": job.task_path,
                "queue": job.queue,
                "state": job.state,
                "return_value": job.return_value,
                "attempts": ExecutionLog.objects.filter(job=job).count(),
            },
            "taskengine": taskengine.__file__,
            "template": get_template("taskengine/base.html").origin.name,
            "static": finders.find("taskengine/dashboard.js"),
            "sys_path": sys.path,
        }
    )
)
