"""The SQL loader (taskengine/db/queries.py) on SQL files written for each test: includes
expand recursively or fail loudly, fragments are never handed out as statements, and a
file the loader cannot read unambiguously is refused with the file, block and line."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest

from taskengine.db import queries


@pytest.fixture
def sql_dir(tmp_path, monkeypatch):
    """An empty SQL directory the loader reads instead of taskengine/db/ (a <vendor>/ directory each)."""
    monkeypatch.setattr(queries, "SQL_DIR", tmp_path)
    queries.load.cache_clear()
    queries._compacted.cache_clear()
    yield tmp_path
    queries.load.cache_clear()
    queries._compacted.cache_clear()


def write(directory, filename: str, text: str) -> None:
    (directory / filename).parent.mkdir(parents=True, exist_ok=True)
    (directory / filename).write_text(textwrap.dedent(text).lstrip())


def connection(vendor: str = "sqlite"):
    return SimpleNamespace(vendor=vendor)


def test_a_plain_block_is_its_text_without_the_trailing_semicolon(sql_dir):
    write(
        sql_dir,
        "sqlite/things.sql",
        """
        -- A file comment before the first block belongs to no block.

        -- name: count_things
        -- How many.
        SELECT count(*) FROM thing;
        """,
    )
    assert queries.load("sqlite")["count_things"] == "-- How many.\nSELECT count(*) FROM thing"
    assert queries.sql(connection(), "count_things") == "SELECT count(*)FROM thing"


def test_nested_includes_expand_fully(sql_dir):
    write(
        sql_dir,
        "sqlite/things.sql",
        """
        -- name: select_things
        SELECT thing.id
        -- @include thing_source


        -- name: thing_source (fragment)
        FROM thing
        -- @include thing_filter


        -- name: thing_filter (fragment)
        WHERE thing.live
        -- @include thing_order


        -- name: thing_order (fragment)
        ORDER BY thing.id;
        """,
    )
    assert queries.load("sqlite")["select_things"] == (
        "SELECT thing.id\nFROM thing\nWHERE thing.live\nORDER BY thing.id"
    )


def test_an_include_resolves_across_the_files_of_one_vendor_only(sql_dir):
    write(sql_dir, "sqlite/a.sql", "-- name: select_things\nSELECT 1\n-- @include shared_tail\n")
    write(sql_dir, "sqlite/b.sql", "-- name: shared_tail (fragment)\nFROM thing\n")
    write(sql_dir, "postgresql/a.sql", "-- name: select_things\nSELECT 1\n-- @include shared_tail\n")
    assert queries.load("sqlite")["select_things"] == "SELECT 1\nFROM thing"
    with pytest.raises(ValueError, match=r"postgresql/a\.sql.*select_things.*shared_tail"):
        queries.sql(connection("postgresql"), "select_things")


def test_an_indented_include_keeps_its_indentation_in_the_expanded_text(sql_dir):
    write(
        sql_dir,
        "sqlite/things.sql",
        """
        -- name: select_things
        SELECT *
          FROM (
            -- @include live_things
          ) AS t


        -- name: live_things (fragment)
        SELECT id FROM thing
         WHERE live
        """,
    )
    assert queries.load("sqlite")["select_things"] == (
        "SELECT *\n  FROM (\n    SELECT id FROM thing\n     WHERE live\n  ) AS t"
    )


def test_an_unknown_include_names_the_file_the_block_and_the_include(sql_dir):
    write(sql_dir, "sqlite/things.sql", "-- name: select_things\nSELECT 1\n-- @include no_such_fragment\n")
    with pytest.raises(ValueError, match=r"sqlite/things\.sql.*select_things.*no_such_fragment"):
        queries.load("sqlite")


def test_an_unknown_include_inside_a_fragment_names_the_fragment(sql_dir):
    write(
        sql_dir,
        "sqlite/things.sql",
        """
        -- name: select_things
        SELECT 1
        -- @include outer_part


        -- name: outer_part (fragment)
        FROM thing
        -- @include missing_part
        """,
    )
    with pytest.raises(ValueError, match=r"sqlite/things\.sql.*outer_part.*missing_part"):
        queries.load("sqlite")


def test_an_include_cycle_is_refused_with_the_chain(sql_dir):
    write(
        sql_dir,
        "sqlite/things.sql",
        """
        -- name: select_things
        SELECT 1
        -- @include part_a


        -- name: part_a (fragment)
        FROM thing
        -- @include part_b


        -- name: part_b (fragment)
        WHERE 1
        -- @include part_a
        """,
    )
    with pytest.raises(ValueError, match=r"cycle.*part_a -> part_b -> part_a"):
        queries.load("sqlite")


def test_a_fragment_including_itself_is_a_cycle(sql_dir):
    write(
        sql_dir,
        "sqlite/things.sql",
        "-- name: select_things\nSELECT 1\n-- @include part_a\n\n-- name: part_a (fragment)\n-- @include part_a\n",
    )
    with pytest.raises(ValueError, match=r"cycle.*part_a -> part_a"):
        queries.load("sqlite")


@pytest.mark.parametrize(
    "line",
    [
        "-- @include",  # no name
        "-- @include tail extra",  # two names
        "-- @include tail;",  # not a name
        "WHERE 1 -- @include tail",  # not on a line of its own
        "--@include-tail",
    ],
)
def test_an_include_line_the_loader_cannot_expand_is_refused_not_left_behind(sql_dir, line):
    # Expansion replaces every well-formed include line, so any "@include" still in the
    # text afterwards is a line that would silently stay behind as a comment.
    write(
        sql_dir,
        "sqlite/things.sql",
        f"-- name: select_things\nSELECT 1\n{line}\n\n-- name: tail (fragment)\nFROM thing\n",
    )
    with pytest.raises(ValueError, match=r"sqlite/things\.sql.*select_things.*@include"):
        queries.load("sqlite")


def test_no_statement_of_the_shipped_files_keeps_an_include_line():
    for vendor in ("postgresql", "sqlite"):
        for name, text in queries.load(vendor).items():
            assert "@include" not in text, f"{vendor} {name}"


def test_a_fragment_is_not_handed_out_as_a_statement(sql_dir):
    write(
        sql_dir,
        "sqlite/things.sql",
        "-- name: select_things\nSELECT 1\n-- @include thing_source\n\n-- name: thing_source (fragment)\nFROM thing\n",
    )
    with pytest.raises(LookupError, match=r"thing_source.*fragment.*sqlite/things\.sql.*not a statement"):
        queries.sql(connection(), "thing_source")
    # The mapping that libpq reads by name refuses it the same way.
    with pytest.raises(LookupError, match=r"thing_source.*fragment"):
        queries.load("sqlite")["thing_source"]
    assert "thing_source" not in queries.load("sqlite")
    assert list(queries.load("sqlite")) == ["select_things"]


def test_an_unknown_block_names_the_vendor(sql_dir):
    write(sql_dir, "sqlite/things.sql", "-- name: select_things\nSELECT 1\n")
    with pytest.raises(LookupError, match=r"no SQL block 'select_thongs' for sqlite"):
        queries.sql(connection(), "select_thongs")


def test_a_fragment_no_block_includes_is_refused(sql_dir):
    write(sql_dir, "sqlite/things.sql", "-- name: select_things\nSELECT 1\n\n-- name: orphan (fragment)\nFROM x\n")
    with pytest.raises(ValueError, match=r"sqlite/things\.sql.*orphan.*included by no block"):
        queries.load("sqlite")


def test_an_include_of_a_statement_is_refused(sql_dir):
    # Sharing goes through fragments: editing a statement never changes another one.
    write(
        sql_dir,
        "sqlite/things.sql",
        "-- name: select_one\nSELECT 1\n\n-- name: select_things\n-- @include select_one\n",
    )
    with pytest.raises(ValueError, match=r"select_things.*includes 'select_one'.*not a fragment"):
        queries.load("sqlite")


def test_duplicate_block_names_in_one_file_are_refused(sql_dir):
    write(sql_dir, "sqlite/things.sql", "-- name: select_things\nSELECT 1\n\n-- name: select_things\nSELECT 2\n")
    with pytest.raises(ValueError, match=r"sqlite/things\.sql.*select_things.*twice"):
        queries.load("sqlite")


def test_duplicate_block_names_across_files_name_both_files(sql_dir):
    write(sql_dir, "sqlite/a.sql", "-- name: select_things\nSELECT 1\n")
    write(sql_dir, "sqlite/b.sql", "-- name: select_things (fragment)\nSELECT 2\n")
    with pytest.raises(ValueError, match=r"select_things.*sqlite/a\.sql.*sqlite/b\.sql"):
        queries.load("sqlite")


@pytest.mark.parametrize(
    "header",
    [
        "-- name: select-things",
        "-- name: select_things extra",
        "-- name: select_things (fragmnet)",
        "-- name:",
        "  -- name: select_things",
    ],
)
def test_a_block_header_the_loader_cannot_read_is_refused(sql_dir, header):
    # Otherwise the line and the query under it would run as part of the block before.
    write(sql_dir, "sqlite/things.sql", f"-- name: first\nSELECT 1\n\n{header}\nSELECT 2\n")
    with pytest.raises(ValueError, match=r"sqlite/things\.sql.*line 4.*name:"):
        queries.load("sqlite")


def test_an_empty_block_is_refused(sql_dir):
    write(sql_dir, "sqlite/things.sql", "-- name: first\n\n-- name: second\nSELECT 2\n")
    with pytest.raises(ValueError, match=r"sqlite/things\.sql.*first.*empty"):
        queries.load("sqlite")


def test_parse_blocks_expands_includes_of_one_text_and_keeps_fragments_out():
    # The benchmark's own SQL files (taskengine/bench/*.sql) are read this way.
    text = "-- name: fill\nINSERT INTO t\n-- @include rows\n\n-- name: rows (fragment)\nSELECT 1;\n"
    blocks = queries.parse_blocks(text)
    assert dict(blocks) == {"fill": "INSERT INTO t\nSELECT 1"}
    with pytest.raises(LookupError, match=r"rows.*fragment"):
        blocks["rows"]


@pytest.mark.parametrize(
    ("written", "sent"),
    [
        ("SELECT 1 -- why\n  FROM thing", "SELECT 1 FROM thing"),
        ("SELECT /* a\n block */ 1", "SELECT 1"),
        ("SELECT f( a ,\n b )\n  FROM thing", "SELECT f(a,b)FROM thing"),
        # Quoted text is kept exactly: spaces, comment marks, commas and parentheses in it.
        ("SELECT 'a  -- not a comment ,( )'  FROM t", "SELECT 'a  -- not a comment ,( )' FROM t"),
        ("SELECT 'it''s  -- x'  , 2", "SELECT 'it''s  -- x',2"),
        ('SELECT "odd  -- name" FROM t', 'SELECT "odd  -- name" FROM t'),
        ("SELECT E'a\\'  -- b'  FROM t", "SELECT E'a\\'  -- b' FROM t"),
        ("SELECT $q$ a  -- b , ( $q$  FROM t", "SELECT $q$ a  -- b , ( $q$ FROM t"),
        # A word ending in e before a quote is not an E'' string: the backslash ends nothing.
        ("WHERE state='C:\\'  -- c\n AND x", "WHERE state='C:\\' AND x"),
        ("SELECT x %% 2 FROM t WHERE y = %(y)s", "SELECT x %% 2 FROM t WHERE y = %(y)s"),
        # An untagged dollar quote is quoted text too.
        ("SELECT $$ a  -- b , ( $$  FROM t", "SELECT $$ a  -- b , ( $$ FROM t"),
        # Two literals split by a newline are one literal in PostgreSQL: the newline stays.
        ("SELECT 'a'\n   'b' FROM t", "SELECT 'a'\n'b' FROM t"),
        ("SELECT 1 -- see /* here\n, 2", "SELECT 1,2"),
    ],
)
def test_a_statement_is_sent_without_comments_or_layout_and_its_quoted_text_kept(written, sent):
    assert queries.compact(written) == sent


def test_the_workers_batch_statements_fit_psycopgs_query_cache():
    """psycopg parses a query for its placeholders on every execute unless the query is
    at most MAX_CACHED_STATEMENT_LENGTH bytes (then it is parsed once): the statements
    a worker runs per batch must fit, or each batch pays the parse again."""
    from psycopg import _queries  # the limit is psycopg's own, read where it is defined

    limit = _queries.MAX_CACHED_STATEMENT_LENGTH
    for name in (
        "claim_jobs",
        "claim_jobs_advisory",
        "finish_and_claim",
        "finish_and_claim_advisory",
        "finish_jobs",
        "extend_leases",
        "insert_job",
        "insert_job_unique",
        "release_jobs",
    ):
        sent = queries.sql(connection("postgresql"), name)
        assert len(sent.encode()) <= limit, (name, len(sent.encode()), limit)


def test_a_nested_block_comment_is_refused_not_cut_short():
    with pytest.raises(queries.UncompactableSQL, match="nested"):
        queries.compact("SELECT a /* outer /* inner */ still a comment */ FROM t")
