"""The repository is self-contained: no code, test, doc or script names a path beside or
above the checkout (a clone placed anywhere, with nothing next to it, must work)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOT_THE_PROJECT = {
    ".git",
    ".venv",
    ".venv-matrix",
    "var",
    "build",
    "dist",
    "__pycache__",
    ".pytest_cache",
    "test-artifacts",
    ".hypothesis",
    ".mypy_cache",
}  # tools' own caches, ignored by git
# Written in pieces so that this file does not match itself.
OUTSIDE = re.compile(
    "|".join(
        [
            r"\.\./" + "shared",  # a sibling directory of the checkout
            r"""["']""" + "shared" + r"""["']\s*/""",  # a path joined onto a directory named so
            r"/" + r"work/",  # an absolute path of one machine
        ]
    )
)


def project_files() -> list[Path]:
    return [
        p
        for p in ROOT.rglob("*")
        if p.is_file()
        and not NOT_THE_PROJECT & set(p.relative_to(ROOT).parts)
        and not p.relative_to(ROOT).parts[0].endswith(".egg-info")
    ]


def test_no_file_of_the_project_names_a_path_outside_the_checkout():
    offending = []
    for path in project_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offending.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offending, "\n".join(offending)
