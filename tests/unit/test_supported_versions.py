"""The versions the package says it supports are the versions bin/test-matrix tests:
pyproject.toml's Django and Python classifiers against the matrix's table, and the README's
supported-versions table against both."""

import re
import tomllib

from tests.conftest import ROOT


def matrix() -> tuple[set[str], dict[str, str]]:
    """bin/test-matrix's Django versions, and each Python with required or where-present."""
    script = (ROOT / "bin" / "test-matrix").read_text()
    djangos = set(re.findall(r'^\s+"(\d+\.\d+)\|django>=', script, re.M))
    combos = re.search(r"DEFAULT_COMBINATIONS=\((.*?)\)", script, re.S)
    assert combos, "bin/test-matrix has no DEFAULT_COMBINATIONS"
    pythons: dict[str, str] = {}
    for python, django, need in re.findall(r'"(\d+\.\d+)/(\d+\.\d+)\|([\w-]+)"', combos.group(1)):
        assert django in djangos, (python, django)
        pythons[python] = need
    return djangos, pythons


def classifiers() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["classifiers"]


def test_the_django_classifiers_are_the_djangos_the_matrix_runs():
    djangos, _ = matrix()
    assert djangos == {"5.2", "6.0", "6.1"}
    claimed = {c.rsplit(" :: ", 1)[1] for c in classifiers() if re.fullmatch(r"Framework :: Django :: \d+\.\d+", c)}
    assert claimed == djangos


def test_the_python_classifiers_are_the_pythons_the_matrix_requires():
    _, pythons = matrix()
    claimed = {
        c.rsplit(" :: ", 1)[1] for c in classifiers() if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    # A Python the matrix runs only where present is not claimed: no test machine has it.
    assert claimed == {p for p, need in pythons.items() if need == "required"}
    assert set(pythons.values()) <= {"required", "where-present"}


def test_the_readme_table_has_a_row_for_every_python_and_a_column_for_every_django():
    djangos, pythons = matrix()
    readme = (ROOT / "README.md").read_text()
    table = readme.split("### Supported versions", 1)[1].split("\n\n", 2)[1]
    header, _, *rows = table.splitlines()
    assert [c.split()[0] for c in header.strip("|").split("|")[1:]] == sorted(djangos)
    assert [r.strip("|").split("|")[0].strip() for r in rows] == sorted(pythons)
    for row in rows:
        python = row.strip("|").split("|")[0].strip()
        if pythons[python] == "where-present":
            assert "not tested" in row, row
        else:
            assert "CI" in row, row
