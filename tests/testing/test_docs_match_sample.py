"""docs/testing.md's sample suite is the code CI runs: each block marked
``<!-- sample: <path> -->`` must be that file, character for character."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = re.compile(r"<!-- sample: (?P<path>\S+) -->\n```python\n(?P<code>.*?)```\n", re.S)


def test_the_sample_blocks_of_docs_testing_md_are_the_files_that_run_in_ci():
    samples = {m["path"]: m["code"] for m in SAMPLE.finditer((ROOT / "docs/testing.md").read_text())}
    assert set(samples) == {"tests/testing/sample_tasks.py", "tests/testing/test_docs_sample.py"}
    for path, code in samples.items():
        assert code == (ROOT / path).read_text(), f"docs/testing.md's block for {path} differs from the file"
