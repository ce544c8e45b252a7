"""Parity of the shipped SQL files (taskengine/db/<vendor>/<concept>.sql): the blocks
each database must define, listed here by hand, so a block that goes missing from one
file, or appears in one without the other, fails here instead of at the first call on
that database. A block one database has and the other has not is listed with the reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from taskengine.db import queries

ROOT = Path(__file__).resolve().parents[2]
VENDORS = ("postgresql", "sqlite")

# concept -> the statements both files define.
BOTH: dict[str, set[str]] = {
    "backfill": {
        "backfill_count_pending",
        "backfill_next_batch",
        "backfill_fill_batch",
        "backfill_report_counts",
        "backfill_sample_missing",
        "backfill_sample_mismatched",
    },
    "clock": {"db_now"},
    "console": {"console_queued_queues", "console_distinct_tenants"},
    "jobs": {"insert_job", "claim_jobs", "extend_leases"},
    "limits": {
        "limited_queues",
        "queued_keys",
        "running_by_queue",
        "running_by_key",
        "queue_candidates",
        "key_candidates",
        "claim_limited",
        "count_rate",
    },
    "leadership": {"leader_acquire", "leader_renew", "leader_resign", "leader_fence", "leader_current"},
    "maintenance": {
        "mark_dead_workers",
        "prune_workers",
        "enqueue_schedule_slot",
        "record_missed_slot",
        "advance_schedule",
    },
    "metrics": {
        "metrics_queued_queues",
        "metrics_queue_stats",
        "metrics_running_stats",
        "metrics_leaders",
        "metrics_workers_alive",
        "metrics_queues_paused",
    },
    "reconcile": {
        "reconcile_expired_leases",
        "reconcile_dead_worker_jobs",
        "reconcile_blocked_unique_keys",
        "reconcile_stale_queued",
        "reconcile_stale_queued_by_queue",
        "reconcile_cancel_queued_job",
        "reconcile_schedules",
        "reconcile_schedule_points",
        "reconcile_record_missed_slot",
        "reconcile_user_id_mismatch",
        "reconcile_fix_user_id_mismatch",
        "reconcile_leaders",
        "reconcile_workers",
        "reconcile_live_worker_queues",
    },
    "recovery": set(),
    "testing": {"testing_seconds_until_due", "testing_engine_now"},
}

# (concept, vendor) -> the statements only that database defines, and why.
ONLY: dict[tuple[str, str], set[str]] = {
    # PostgreSQL does a batch in one statement over arrays or a JSON document; SQLite
    # (one writer, no arrays) runs one statement per job inside one IMMEDIATE transaction.
    ("jobs", "postgresql"): {
        "insert_jobs",  # many jobs in one INSERT … FROM jsonb_to_recordset (SQLite loops insert_job)
        "insert_job_unique",  # ON CONFLICT on the partial unique index (SQLite's insert_job checks)
        "reserve_job_ids",  # ids for COPY, the bulk path SQLite has not
        "copy_jobs",
        "claim_jobs_advisory",  # USE_ADVISORY_LOCKS: PostgreSQL's advisory locks
        "finish_jobs",  # SQLite: finish_job + finish_attempt_log per outcome
        # A worker's batch (finish + claim) in one statement, one round trip and one commit;
        # SQLite runs the finishes and the claim in one transaction.
        "finish_and_claim",
        "finish_and_claim_advisory",
        "release_jobs",  # SQLite: release_job + finish_attempt_log per job
        # A worker's connections' planner settings: SQLite has no such switches, and the
        # engine never runs ANALYZE there, so no queue statistics steer its plans.
        "worker_planner_settings",
    },
    ("jobs", "sqlite"): {
        "log_attempts",  # PostgreSQL writes the attempt rows inside claim_jobs
        "finish_job",
        "finish_attempt_log",
        "release_job",
    },
    # PostgreSQL recovers in one fenced statement (row locks re-check the WHERE); SQLite
    # reads, then compare-and-sets each job, under its single write lock.
    ("recovery", "postgresql"): {"recover_expired_leases"},
    # Retention's batch: PostgreSQL selects, locks and deletes jobs and attempt rows in one
    # statement (data-modifying CTEs); SQLite reads the batch, then deletes both.
    # ... and only PostgreSQL has dead tuples to vacuum (leader/vacuum.py): SQLite's
    # deleted rows' pages go back to its free list, and nothing the engine does needs VACUUM.
    ("maintenance", "postgresql"): {
        "prune_retention_batch",
        "tables_due_for_vacuum",
        "table_vacuum_count",
        "vacuum_job_table",
        "vacuum_attempt_table",
        "pace_vacuum",
        "unpace_vacuum",
    },
    ("maintenance", "sqlite"): {"select_retention_batch", "delete_retention_attempts", "delete_retention_jobs"},
    ("recovery", "sqlite"): {"select_recoverable", "recover_job", "log_lost_attempt"},
    # EXPLAIN's row estimate for a queue past the exact-count cap; SQLite keeps no such
    # statistics, so it always counts up to the cap.
    ("metrics", "postgresql"): {"metrics_queue_depth_estimate"},
    # PostgreSQL: whether the limited claim has work is part of the claim statement
    # (the fragment limits_waiting), and keys are try-locked (advisory locks);
    # SQLite asks separately, under its one write lock.
    ("limits", "postgresql"): {"lock_keys"},
    ("limits", "sqlite"): {"claim_needs_limits"},
}

# (concept, vendor) -> the fragments (shared parts, included, never run on their own).
FRAGMENTS: dict[tuple[str, str], set[str]] = {
    ("jobs", "postgresql"): {
        "insert_one_job",
        "claim_candidates",
        "claim_candidates_advisory",
        "claim_wanted_queues",
        "claim_and_log_attempts",
        "finish_outcomes",
        "finish_and_claim_result",
        "claim_jobs_result",
    },
    ("limits", "postgresql"): {"limits_waiting"},
}


def blocks(concept: str, vendor: str) -> dict[str, queries.Block]:
    return queries.read_blocks(queries.SQL_DIR / vendor / f"{concept}.sql")


def test_every_concept_has_one_file_per_database_and_no_other_files():
    names = sorted(p.relative_to(queries.SQL_DIR).as_posix() for p in queries.SQL_DIR.rglob("*.sql"))
    assert names == sorted(f"{vendor}/{concept}.sql" for concept in BOTH for vendor in VENDORS)


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("concept", sorted(BOTH))
def test_each_file_defines_exactly_the_statements_listed(concept, vendor):
    statements = {name for name, block in blocks(concept, vendor).items() if not block.fragment}
    expected = BOTH[concept] | ONLY.get((concept, vendor), set())
    assert sorted(statements - expected) == [], "defined but not listed in this test"
    assert sorted(expected - statements) == [], "listed but not defined"


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("concept", sorted(BOTH))
def test_each_file_defines_exactly_the_fragments_listed(concept, vendor):
    fragments = {name for name, block in blocks(concept, vendor).items() if block.fragment}
    assert fragments == FRAGMENTS.get((concept, vendor), set())


def test_the_one_database_blocks_are_really_one_database_only():
    for (concept, vendor), names in ONLY.items():
        other = next(v for v in VENDORS if v != vendor)
        assert not names & set(blocks(concept, other)), f"{concept}: listed as {vendor} only"
        assert not names & BOTH[concept]


@pytest.mark.parametrize("vendor", VENDORS)
def test_every_statement_loads_with_its_includes_expanded(vendor):
    loaded = queries.load(vendor)
    expected = set().union(*BOTH.values()) | set().union(*(names for (_, v), names in ONLY.items() if v == vendor))
    assert set(loaded) == expected
    for name, text in loaded.items():
        assert text.strip(), name
        assert "@include" not in text, name
        assert not re.search(r"^\s*--\s*name\s*:", text, re.MULTILINE), name


def test_every_block_the_code_names_exists_for_some_database():
    # sql(connection, "name") with a literal name anywhere in the package.
    named = set()
    for path in (ROOT / "taskengine").rglob("*.py"):
        named |= set(re.findall(r"\bsql\(\s*[\w.]+,\s*\"(\w+)\"", path.read_text()))
    assert named, "the pattern found no call"
    defined = set(queries.load("postgresql")) | set(queries.load("sqlite"))
    assert sorted(named - defined) == []


# The benchmark's own SQL (PostgreSQL only), beside its code in taskengine/bench/.
BENCH: dict[str, set[str]] = {
    "raw_claim.setup.sql": {"create_table", "load_queued", "create_claim_index", "settle", "count_queued"},
    "console_perf.sql": {"console_perf_fill_jobs", "console_perf_fill_attempts"},
    "raw_copy.sql": {"drop_scratch", "create_scratch", "rows_out", "rows_in"},
    "pgqueuer_drain.sql": {"pgqueuer_queued", "pgqueuer_drained"},
}


@pytest.mark.parametrize("filename", sorted(BENCH))
def test_the_benchmark_sql_loads_with_the_blocks_listed(filename):
    assert set(queries.package_statements("taskengine.bench", filename)) == BENCH[filename]


def test_no_benchmark_block_ships_among_the_engine_sql():
    engine = set(queries.load("postgresql")) | set(queries.load("sqlite"))
    assert not engine & set().union(*BENCH.values())
