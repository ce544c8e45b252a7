"""The database seam (issue #14): vendor branches live in taskengine/db/, behind the
Store interface. Outside it, only checks that must name a vendor may compare
``connection.vendor``: the migrations that create PostgreSQL-only objects (the NOTIFY
trigger, concurrent index builds), which run before any store and must stay as they
shipped, and the console's PostgreSQL-only timing command. This scans the source as text, as
``grep -rnE 'vendor (==|!=)' taskengine/`` does: elsewhere a capability of the store decides."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "taskengine"
VENDOR_COMPARISON = re.compile(r"vendor\s*[=!]=")
SEAM = PACKAGE / "db"
MUST_NAME_A_VENDOR = {
    "migrations/0004_notify_trigger.py",  # the PostgreSQL NOTIFY trigger
    "migrations/0005_hot_path_indexes.py",  # PostgreSQL-only index options
    "migrations/0009_queue_limits_concurrency_key.py",  # the PostgreSQL NOTIFY of a freed key
    "migrations/0011_job_autovacuum.py",  # PostgreSQL storage parameters
    "management/commands/console_perf.py",  # times the console on PostgreSQL only, and says so
}


def vendor_comparisons() -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = [n for n, line in enumerate(path.read_text().splitlines(), 1) if VENDOR_COMPARISON.search(line)]
        if lines:
            found[path.relative_to(PACKAGE).as_posix()] = lines
    return found


def test_vendor_comparisons_are_only_in_the_seam_and_the_checks_that_must_name_a_vendor():
    outside = {
        path: lines
        for path, lines in vendor_comparisons().items()
        if not path.startswith("db/") and path not in MUST_NAME_A_VENDOR
    }
    assert outside == {}, "branch through taskengine.db.store_for(connection) instead"


def test_the_scan_finds_what_grep_finds():
    found = vendor_comparisons()
    assert "db/__init__.py" in found  # store_for picks the store by vendor
    assert set(found) >= MUST_NAME_A_VENDOR, "an allowed entry no longer needed: drop it from the list"
