"""Every lint or type-checker suppression in the project says why, on its own line:
`# noqa: CODE - reason`, `# type: ignore[code]  # reason`, `# pragma: no cover - reason`.
A bare suppression silences a check without telling the next reader what it hides.

mypy reads only a comment after its `# type: ignore[code]` (any other text makes the
ignore itself an error), so the reason of a type: ignore follows a second `#`."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUPPRESSION = re.compile(r"#\s*(noqa\b|type:\s*ignore\b|pragma:\s*no\s*cover\b|pyright:\s*ignore\b)")
WITH_REASON = re.compile(
    r"#\s*(noqa(:\s*[A-Z]+[0-9]+(,\s*[A-Z]+[0-9]+)*)?|pragma:\s*no\s*cover|pyright:\s*ignore(\[[^\]]+\])?)\s+[-—]\s+\S"
    r"|#\s*type:\s*ignore\[[^\]]+\]\s+#\s*\S"
)


def project_sources() -> list[Path]:
    """Every Python file of the project but this one (its samples are bare on purpose)."""
    roots = [ROOT / "taskengine", ROOT / "tests", ROOT / "project"]
    here = Path(__file__).resolve()
    return sorted(p for root in roots for p in root.rglob("*.py") if p.resolve() != here)


def bare_suppressions_in(path: Path) -> list[str]:
    return [
        f"{path.name}:{number}: {line.strip()}"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if SUPPRESSION.search(line) and not WITH_REASON.search(line)
    ]


def test_every_suppression_says_why():
    assert [found for path in project_sources() for found in bare_suppressions_in(path)] == []


def test_the_check_finds_a_bare_suppression(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os  # noqa: F401\n"
        "import sys  # noqa: F401 - re-exported\n"
        "x: int = 'a'  # type: ignore[assignment]\n"
        "y: int = 'b'  # type: ignore[assignment]  # the test of a wrong type\n"
        "z = 1  # pragma: no cover\n"
        "w: int = 'c'  # type: ignore  # no error code\n"
        "v: int = 'd'  # type: ignore[assignment] - a reason mypy would reject\n"
    )
    assert bare_suppressions_in(sample) == [
        "sample.py:1: import os  # noqa: F401",
        "sample.py:3: x: int = 'a'  # type: ignore[assignment]",
        "sample.py:5: z = 1  # pragma: no cover",
        "sample.py:6: w: int = 'c'  # type: ignore  # no error code",
        "sample.py:7: v: int = 'd'  # type: ignore[assignment] - a reason mypy would reject",
    ]
