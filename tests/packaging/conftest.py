"""The wheel, built from a copy of the checkout, and a fresh virtualenv with it installed
(the current venv's base interpreter; dependencies from the package index or pip's
cache). Commands in that virtualenv run from temporary directories with an environment
that names nothing of the checkout: no PYTHONPATH, no settings module, no PATH entry
inside it.

The virtualenv gets the wheel and what TASKENGINE_WHEEL_REQUIREMENTS names (pip
requirements separated by spaces, e.g. "django>=5.2,<5.3 django-tasks" for the README's
Django 5.2 install); by default the Django of the environment running the tests, and the
django-tasks backport when that environment has it, pinned to the versions found there.
bin/test-matrix runs the acceptance test in each Django's own environment.

Both are made once and kept in var/packaging/<digest of the copied sources>/ — the
virtualenv in venv-pyP.Q-<digest of the requirements>/, each made under a file lock — so
one half of bin/test reuses what the other built from the same sources (installing the
dependencies is most of the time; the halves run side by side), and bin/test-matrix
reuses the wheel for every Python and Django it runs; a change to any file of the
project makes a new digest, and the old builds are removed."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

# What a build must not see: local state of the checkout, not part of the project.
NOT_THE_PROJECT = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".venv-matrix",
    "var",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
    ".ruff_cache",
    ".mypy_cache",
    "test-artifacts",
    "*.sqlite3",
    "*.sqlite3-*",
    "db.sqlite3*",
)


CACHE = ROOT / "var" / "packaging"


@contextlib.contextmanager
def cache_locked() -> Iterator[None]:
    """var/packaging/ for this process alone while it builds or installs there: bin/test
    runs its SQLite and PostgreSQL halves side by side, and both reuse one build."""
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with open(CACHE.parent / "packaging.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass
class Built:
    path: Path
    output: str  # what `python -m build` printed


def run(
    args: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{args} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def outside_env(venv: Path | None = None) -> dict[str, str]:
    """This process's environment without anything that points into the checkout."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "DJANGO_SETTINGS_MODULE", "DATABASE_URL", "VIRTUAL_ENV"}
        and not k.startswith("TASKENGINE_")
    }
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not Path(p).resolve().is_relative_to(ROOT)]
    if venv is not None:
        path.insert(0, str(venv / "bin"))
    env["PATH"] = os.pathsep.join(path)
    return env


def digest(tree: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        sha.update(path.relative_to(tree).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return sha.hexdigest()[:16]


# What `python -m build --sdist` and `--wheel` do, and the editable wheel that
# `pip install -e` (bin/quickstart, bin/test) builds, through the build library, in one
# isolated environment (the build requirements are installed once, not three times).
# Prints "=== <kind>" before each, so the output can be told apart.
BUILD = """
import sys
from build import ProjectBuilder
from build.env import DefaultIsolatedEnv

source, outdir = sys.argv[1:]
with DefaultIsolatedEnv() as env:
    builder = ProjectBuilder.from_isolated_env(env, source)
    env.install(builder.build_system_requires)
    for kind in ("sdist", "wheel", "editable"):
        env.install(builder.get_requires_for_build(kind))
        print(f"=== {kind}", flush=True)
        builder.build(kind, f"{outdir}/{kind}")
        sys.stdout.flush(); sys.stderr.flush()
"""
KINDS = ("sdist", "wheel", "editable")


def build_all(source: Path, workdir: Path) -> dict[str, Built]:
    """The sdist, the wheel and the editable wheel of the copy of the checkout (a build
    in place would leave build/ and *.egg-info behind, and could reuse a stale build/lib)."""
    dist, log, done = workdir / "dist", workdir / "build.log", workdir / "build.done"
    if not done.exists():
        shutil.rmtree(dist, ignore_errors=True)
        out = subprocess.run(
            [sys.executable, "-c", BUILD, source, dist],
            cwd=workdir,
            env=outside_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stdout[-5000:]
        log.write_text(out.stdout)
        done.touch()
    parts = re.split(r"^=== (\w+)$", log.read_text(), flags=re.MULTILINE)
    outputs = dict(zip(parts[1::2], parts[2::2], strict=True))
    return {kind: Built(next((dist / kind).iterdir()), outputs[kind]) for kind in KINDS}


@pytest.fixture(scope="session")
def packaging_dir(tmp_path_factory) -> Path:
    """var/packaging/<digest>/ with source/, the copy of the checkout that is built."""
    copy = tmp_path_factory.mktemp("checkout") / "source"
    shutil.copytree(ROOT, copy, ignore=NOT_THE_PROJECT)
    workdir = CACHE / digest(copy)
    with cache_locked():
        if not (workdir / "source").exists():
            if CACHE.exists():
                for old in CACHE.iterdir():
                    shutil.rmtree(old, ignore_errors=True)
            workdir.mkdir(parents=True)
            shutil.move(copy, workdir / "source")
    return workdir


@pytest.fixture(scope="session")
def builds(packaging_dir) -> dict[str, Built]:
    with cache_locked():
        return build_all(packaging_dir / "source", packaging_dir)


@pytest.fixture(scope="session")
def wheel(builds) -> Built:
    return builds["wheel"]


@pytest.fixture(scope="session")
def sdist(builds) -> Built:
    return builds["sdist"]


@pytest.fixture(scope="session")
def editable(builds) -> Built:
    return builds["editable"]


def wheel_requirements() -> list[str]:
    """What the fresh virtualenv installs beside the wheel (see the module's docstring)."""
    given = os.environ.get("TASKENGINE_WHEEL_REQUIREMENTS", "").split()
    if given:
        return given
    here = [f"django=={importlib.metadata.version('django')}"]
    try:
        here.append(f"django-tasks=={importlib.metadata.version('django-tasks')}")
    except importlib.metadata.PackageNotFoundError:
        pass  # Django 6.x: django.tasks ships with Django, the README installs no backport
    return here


@pytest.fixture(scope="session")
def venv(wheel, packaging_dir) -> Path:
    """A fresh virtualenv with the wheel installed, nothing of the checkout in it."""
    requirements = wheel_requirements()
    key = hashlib.sha256(" ".join(requirements).encode()).hexdigest()[:12]
    name = f"venv-py{sys.version_info.major}.{sys.version_info.minor}-{key}"
    path, done = packaging_dir / name, packaging_dir / f"{name}.done"
    with cache_locked():
        _make_venv(path, done, wheel, requirements, packaging_dir)
    return path


def _make_venv(path: Path, done: Path, wheel: Built, requirements: list[str], packaging_dir: Path) -> None:
    if not done.exists():
        shutil.rmtree(path, ignore_errors=True)
        base_python = getattr(sys, "_base_executable", None) or sys.executable
        # No pip of its own (ensurepip is slow); this environment's pip installs into it.
        run([base_python, "-m", "venv", "--without-pip", path], cwd=packaging_dir, env=outside_env())
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                path / "bin" / "python",
                "install",
                "--quiet",
                wheel.path,
                *requirements,
            ],
            cwd=packaging_dir,
            env=outside_env(path),
            timeout=600,
        )
        done.touch()


def readme_snippet(name: str) -> str:
    """The fenced code block after ``<!-- snippet: NAME -->`` in README.md."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- snippet: {re.escape(name)} -->\s*```\w*\n(.*?)```", readme, re.S)
    assert match, f"README.md has no snippet {name!r}"
    return match.group(1)
