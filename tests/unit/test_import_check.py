"""The import check itself (bin/lint runs lint-imports with the contracts in
pyproject.toml): it passes on the package as it is and fails, naming the import, when a
copy of the package gets a deliberate upward import or a cycle — imports inside
functions included, since those are the ones that used to hide a cycle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = (sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()")


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """taskengine and pyproject.toml copied to a temporary root, to break on purpose."""
    shutil.copytree(ROOT / "taskengine", tmp_path / "taskengine", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # lint-imports puts its working directory first on sys.path, so the copy is the
    # taskengine it analyses (PYTHONPATH says so too, in case of an installed one).
    return subprocess.run(
        [*LINT_IMPORTS, "--no-cache", "--no-logo"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def add_import_in_function(root: Path, module: str, statement: str) -> None:
    path = root / "taskengine" / f"{module}.py"
    path.write_text(path.read_text() + f"\n\ndef _deliberate_import():\n    {statement}\n")


def test_the_package_as_it_is_keeps_every_contract(package_copy: Path) -> None:
    result = lint_imports(package_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ", 0 broken." in result.stdout
    assert "BROKEN" not in result.stdout


def test_an_upward_import_from_the_bottom_layer_fails_naming_it(package_copy: Path) -> None:
    add_import_in_function(package_copy, "states", "from taskengine.runtime import worker")
    result = lint_imports(package_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "The bottom layer imports nothing above it BROKEN" in result.stdout
    assert "-   taskengine.states -> taskengine.runtime.worker (l." in result.stdout


def test_an_upward_import_inside_the_bottom_layer_fails_naming_it(package_copy: Path) -> None:
    add_import_in_function(package_copy, "compat", "from taskengine.jobs import Outcome")
    result = lint_imports(package_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Inside the bottom layer: jobs, resolution, values > states > compat, conf BROKEN" in result.stdout
    assert "taskengine.compat -> taskengine.jobs (l." in result.stdout


@pytest.mark.parametrize(
    "upward", ["runtime.worker", "runtime.execution", "leader.recovery", "ops.operations", "console.views"]
)
def test_an_upward_import_from_the_database_seam_fails_naming_it(package_copy: Path, upward: str) -> None:
    add_import_in_function(package_copy, "db/base", f"import taskengine.{upward}")
    result = lint_imports(package_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "The database seam imports no runtime, leader, ops or console BROKEN" in result.stdout
    assert f"-   taskengine.db.base -> taskengine.{upward} (l." in result.stdout, result.stdout


def test_a_cycle_above_the_bottom_layer_fails_naming_an_import_that_closes_it(package_copy: Path) -> None:
    # The store is imported by the worker; the store importing the worker back, even
    # inside a function, is a cycle.
    add_import_in_function(package_copy, "store", "from taskengine.runtime import worker")
    result = lint_imports(package_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "No import cycles BROKEN" in result.stdout
    assert ".store -> .runtime" in result.stdout or ".runtime -> .store" in result.stdout, result.stdout


def test_a_cycle_inside_a_package_fails_naming_it(package_copy: Path) -> None:
    # The worker imports the attempt's runtime; the runtime importing the worker back is
    # a cycle between two modules of runtime/.
    add_import_in_function(package_copy, "runtime/execution", "from taskengine.runtime import worker")
    result = lint_imports(package_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "No import cycles BROKEN" in result.stdout
    assert ".execution -> .worker" in result.stdout or ".worker -> .execution" in result.stdout, result.stdout


LAYERS = "Layers: entry points > runtime | console > ops > leader > core > observability >"


@pytest.mark.parametrize(
    ("module", "upward"),
    [
        ("leader/recovery", "taskengine.ops.bulk_batches"),  # the leader imports no operator tool
        ("ops/operations", "taskengine.runtime.worker"),  # operator tools import no runtime
        ("backend", "taskengine.leader.election"),  # the core imports no leader
        ("observability/metrics", "taskengine.store"),  # metrics sit below the core
        ("runtime/worker", "taskengine.console.views"),  # runtime and console are independent
    ],
)
def test_an_import_against_the_layers_fails_naming_it(package_copy: Path, module: str, upward: str) -> None:
    add_import_in_function(package_copy, module, f"import {upward}")
    result = lint_imports(package_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert LAYERS in result.stdout and "BROKEN" in result.stdout, result.stdout
    importer = "taskengine." + module.replace("/", ".")
    assert f"{importer} -> {upward} (l." in result.stdout, result.stdout


def test_bin_lint_runs_the_import_check() -> None:
    assert '"$ROOT/.venv/bin/lint-imports" --no-cache --no-logo' in (ROOT / "bin" / "lint").read_text()


def test_an_import_of_the_benchmark_from_the_engine_fails_naming_it(package_copy: Path) -> None:
    add_import_in_function(package_copy, "runtime/worker", "from taskengine.bench import drain")
    result = lint_imports(package_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Nothing imports the benchmark but its commands BROKEN" in result.stdout
    assert "-   taskengine.runtime.worker -> taskengine.bench.drain (l." in result.stdout, result.stdout


def test_an_import_of_the_runtime_from_the_console_fails_naming_it(package_copy: Path) -> None:
    add_import_in_function(package_copy, "console/views", "from taskengine.runtime import worker")
    result = lint_imports(package_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "The console imports no runtime BROKEN" in result.stdout
    assert "-   taskengine.console.views -> taskengine.runtime.worker (l." in result.stdout, result.stdout


def test_the_benchmark_contract_lists_every_module_but_the_benchmarks_commands() -> None:
    """A module added to taskengine must be added to the contract's sources too, or it
    could import the benchmark unseen."""
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    [apart] = [c for c in contracts if c["id"] == "bench-apart"]
    package = ROOT / "taskengine"
    expected = {f"taskengine.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"} | {
        f"taskengine.{p.name}"
        for p in package.iterdir()
        if (p / "__init__.py").exists() and p.name not in {"bench", "management", "migrations"}
    }
    assert set(apart["source_modules"]) == expected
