"""The wheel is the app: built from the checkout, it holds ``taskengine`` and nothing
else, passes ``twine check``, and installed into a fresh virtualenv (no checkout on the
path) it runs a project made by ``django-admin startproject`` with exactly the README's
"Using it in your project" snippets: migrate, a job through ``runworker --burst``, every
console page and the admin's job list rendered for a superuser.

The acceptance test runs on both halves of bin/test, against the database of each: a
SQLite file in the new project, or a scratch database on the test PostgreSQL server; and
bin/test-matrix runs it on both databases for every Python and Django it covers (on
Django 5.2 with the django-tasks backport, and on 5.2 and 6.0 with the README's lines for
them)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import zipfile
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import database_vendor
from tests.packaging.conftest import outside_env, readme_snippet, run, wheel_requirements

# setuptools, build and the backend report problems as "<Something>Warning" (e.g. a
# SetuptoolsDeprecationWarning for a license table instead of an SPDX string).
BUILD_WARNING = re.compile(r"\b\w*Warning\b")


@pytest.mark.sqlite_only  # nothing here depends on the database; once is enough
def test_the_wheel_holds_the_taskengine_package_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel.path).namelist()
    outside = [n for n in names if not n.startswith(("taskengine/", "taskengine-0.1.0.dist-info/"))]
    assert not outside, outside
    for shipped in (
        "taskengine/templates/taskengine/base.html",
        "taskengine/templates/taskengine/admin/confirm_action.html",
        "taskengine/static/taskengine/dashboard.js",
        "taskengine/py.typed",
        "taskengine/db/postgresql/jobs.sql",
        "taskengine/db/sqlite/jobs.sql",
        "taskengine/bench/raw_claim.pgbench.sql",
        "taskengine/bench/raw_claim.setup.sql",
        "taskengine/bench/raw_copy.sql",
        "taskengine/migrations/0001_initial.py",
        "taskengine-0.1.0.dist-info/licenses/LICENSE",
    ):
        assert shipped in names
    templates = {
        p.relative_to(Path(settings.BASE_DIR)).as_posix()
        for p in (Path(settings.BASE_DIR) / "taskengine" / "templates").rglob("*.html")
    }
    assert templates and templates <= set(names), templates - set(names)


@pytest.mark.sqlite_only
def test_the_build_prints_no_warning_and_twine_check_passes(wheel, sdist, editable, packaging_dir):
    # The editable wheel is what bin/quickstart builds: its warnings are in the quick
    # start's output.
    for built in (wheel, sdist, editable):
        assert not BUILD_WARNING.findall(built.output), built.output[-3000:]
    out = run(
        [sys.executable, "-m", "twine", "check", "--strict", wheel.path, sdist.path],
        cwd=packaging_dir,
        env=outside_env(),
    )
    assert out.stdout.count("PASSED") == 2, out.stdout
    metadata = zipfile.ZipFile(wheel.path).read("taskengine-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in metadata
    assert "Project-URL: " in metadata
    for django in ("5.2", "6.0", "6.1"):
        assert f"Classifier: Framework :: Django :: {django}" in metadata


@pytest.fixture
def project_database(tmp_path) -> tuple[str, str]:
    """The README's database snippet for this run's database, and the lines that point
    it at the test server (for PostgreSQL: a scratch database, dropped afterwards)."""
    if database_vendor() == "sqlite":
        yield readme_snippet("sqlite"), ""
        return
    server = settings.DATABASES["default"]
    name = f"taskengine_wheel{os.environ.get('TASKENGINE_TEST_DB_SUFFIX', '')}"
    where = {
        "host": server.get("HOST") or "127.0.0.1",
        "port": server.get("PORT") or 5432,
        "user": server.get("USER") or "postgres",
        "password": server.get("PASSWORD") or None,
    }
    with psycopg.connect(dbname="postgres", autocommit=True, **where) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    point = (
        f'DATABASES["default"].update(NAME={name!r}, HOST={where["host"]!r}, PORT={where["port"]!r}, '
        f"USER={where['user']!r}, PASSWORD={where['password'] or ''!r})\n"
    )
    try:
        yield readme_snippet("postgresql"), point
    finally:
        with psycopg.connect(dbname="postgres", autocommit=True, **where) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# The versions the fresh virtualenv has, by distribution name (None: not installed).
INSTALLED = """
import importlib.metadata, json
def version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
print(json.dumps({name: version(name) for name in ("django", "django-tasks", "taskengine")}))
"""


@pytest.mark.sqlite_only  # the virtualenv is the same on both halves
def test_the_fresh_virtualenv_has_the_requested_django(venv, tmp_path):
    """What TASKENGINE_WHEEL_REQUIREMENTS (or this environment's Django) asks for is what
    the acceptance test below runs on: bin/test-matrix's line for a Django version is
    about that version."""
    installed = json.loads(run([venv / "bin" / "python", "-c", INSTALLED], cwd=tmp_path, env=outside_env(venv)).stdout)
    assert installed["taskengine"] == "0.1.0"
    for requirement in map(Requirement, wheel_requirements()):
        have = installed.get(canonicalize_name(requirement.name))
        assert have is not None and requirement.specifier.contains(have, prereleases=True), (requirement, installed)


def test_a_startproject_with_the_readme_settings_runs_a_job_and_renders_the_console(venv, tmp_path, project_database):
    site = tmp_path / "site"
    site.mkdir()
    env = outside_env(venv)
    python = str(venv / "bin" / "python")

    def manage(*args: str, **extra: str):
        return run([python, "manage.py", *args], cwd=site, env={**env, **extra})

    run([venv / "bin" / "django-admin", "startproject", "myproject", site], cwd=tmp_path, env=env)
    settings_py = site / "myproject" / "settings.py"
    generated = settings_py.read_text()
    assert "'APP_DIRS': True" in generated or '"APP_DIRS": True' in generated
    assert re.search(r"['\"]DIRS['\"]: \[\]", generated), "startproject's TEMPLATES has DIRS entries"
    versions = json.loads(run([python, "-c", INSTALLED], cwd=site, env=env).stdout)
    # The README's settings and task, and its lines for Django 5.2 (the backport) and 6.0
    # (whose @task takes no max_attempts=).
    project_settings, tasks = readme_snippet("settings"), readme_snippet("tasks")
    first, rest = tasks.split("\n", 1)
    assert first == "from django.tasks import task", tasks
    django_version = tuple(int(n) for n in versions["django"].split(".")[:2])
    if django_version < (6, 0):
        assert versions["django-tasks"], "Django 5.2 without the django-tasks backport the README installs"
        project_settings += readme_snippet("settings-django52")
        tasks = readme_snippet("tasks-django52") + rest
    elif django_version == (6, 0):
        tasks = readme_snippet("tasks-django60") + rest
    database_snippet, point_at_test_server = project_database
    settings_py.write_text(f"{generated}\n{project_settings}\n{database_snippet}\n{point_at_test_server}")
    urls_py = site / "myproject" / "urls.py"
    urls_py.write_text(f"{urls_py.read_text()}\n{readme_snippet('urls')}")
    (site / "myproject" / "tasks.py").write_text(tasks)

    # The README's ten-minute path as written, but for the two commands that wait for a
    # person (createsuperuser asks for a password: here it is given; runserver serves
    # until stopped: here the test client renders the pages).
    interactive = []
    for line in readme_snippet("ten-minutes").splitlines():
        command = shlex.split(line, comments=True)
        assert command[:2] == ["python", "manage.py"], line
        if command[2] in ("createsuperuser", "runserver"):
            interactive.append(command[2])
            continue
        manage(*command[2:])
        if command[2] == "migrate":
            # Django's own deployment checks object to startproject's development
            # defaults; taskengine's have nothing to say about the README's settings.
            deploy = manage("check", "--deploy", "--tag", "taskengine")
            assert "no issues" in deploy.stdout, deploy.stdout + deploy.stderr
    assert interactive == ["createsuperuser", "runserver"]
    manage(
        "createsuperuser",
        "--no-input",
        "--username",
        "admin",
        "--email",
        "admin@example.com",
        DJANGO_SUPERUSER_PASSWORD="a-long-enough-password",
    )
    shutil.copy(Path(__file__).with_name("render_pages.py"), site / "render_pages.py")
    seen = json.loads(run([python, "render_pages.py", "admin"], cwd=site, env=env).stdout.strip().splitlines()[-1])

    assert seen["job"] == {
        "task_path": "myproject.tasks.send_welcome",
        "queue": "emails",
        "state": "succeeded",
        "return_value": "welcome mail sent to ada@example.com",
        "attempts": 1,
    }
    assert seen["statuses"] == dict.fromkeys(seen["statuses"], 200) and len(seen["statuses"]) == 10
    installed = os.path.realpath(venv)
    for key in ("taskengine", "template", "static"):
        where = os.path.realpath(seen[key])
        assert where.startswith(installed) and "site-packages" in where, (key, seen[key])
    # The project itself, the standard library and the new virtualenv: nothing of the checkout.
    checkout = [
        p
        for p in seen["sys_path"]
        if p
        and Path(p).resolve().is_relative_to(settings.BASE_DIR)
        and not Path(p).resolve().is_relative_to(Path(installed))
    ]
    assert not checkout, checkout
