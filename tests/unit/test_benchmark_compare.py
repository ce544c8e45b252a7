"""``manage.py benchmark --compare pgqueuer`` without pgqueuer installed: a clear error
that names the extra to install (``taskengine[bench]``), raised before anything runs,
never a traceback; likewise with pgqueuer's own settings in the environment, which
would move it off the defaults the comparison is with. Absence is simulated by a None in sys.modules, which makes
``import pgqueuer`` raise ImportError as a missing package does."""

from __future__ import annotations

import sys

import pytest
from django.core.management import CommandError, call_command

from taskengine.bench import CompareRefused, require_pgqueuer
from taskengine.bench.pgqueuer_drain import pgqueuer_settings_in

EXTRA = "pip install 'taskengine[bench]'"


@pytest.fixture
def without_pgqueuer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pgqueuer", None)


def test_the_check_names_the_extra_when_pgqueuer_is_missing(without_pgqueuer: None) -> None:
    with pytest.raises(CompareRefused) as raised:
        require_pgqueuer()
    assert "--compare pgqueuer needs the pgqueuer package" in str(raised.value)
    assert EXTRA in str(raised.value)


def test_the_check_passes_with_pgqueuer_installed_and_gives_its_version() -> None:
    # The bench extra is installed with the test extra (bin/_bootstrap.sh).
    from importlib import metadata

    assert require_pgqueuer() == metadata.version("pgqueuer")


def test_the_command_refuses_before_anything_runs(without_pgqueuer: None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CommandError) as raised:
        call_command("benchmark", "--compare", "pgqueuer", "--json")
    assert EXTRA in str(raised.value)
    assert "[benchmark]" not in capsys.readouterr().err  # no phase started


def test_pgqueuers_own_settings_in_the_environment_are_refused_naming_them() -> None:
    environ = {"PGQUEUER_DURABILITY": "volatile", "pgqueuer_prefix": "x_", "PGHOST": "db", "PATH": "/bin"}
    assert pgqueuer_settings_in(environ) == ["PGQUEUER_DURABILITY", "pgqueuer_prefix"]
    with pytest.raises(CompareRefused) as raised:
        require_pgqueuer(environ)
    assert "measures pgqueuer's defaults: unset PGQUEUER_DURABILITY, pgqueuer_prefix" in str(raised.value)
