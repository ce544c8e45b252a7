"""Named SQL, loaded from ``sql/<concept>.<vendor>.sql``.

Each file holds blocks that start with ``-- name: <query_name>``; the text up to the
next block is the query. A line ``-- @include <name>`` is replaced by that block of the
same vendor (for a tail two queries share). ``sql(connection, "claim_jobs")`` returns the block for that
connection's vendor. Keeping SQL in files means a reviewer reads the exact statements
the engine runs, with the index each relies on named in a comment beside it.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from django.db.backends.base.base import BaseDatabaseWrapper

SQL_DIR = Path(__file__).with_name("sql")
_BLOCK = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_INCLUDE = re.compile(r"^--\s*@include\s+(\w+)\s*$", re.MULTILINE)


def parse_blocks(text: str) -> dict[str, str]:
    parts = _BLOCK.split(text)
    blocks: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in blocks:
            raise ValueError(f"duplicate SQL block name {name!r}")
        blocks[name] = body.strip().rstrip(";")
    return blocks


@cache
def load(vendor: str) -> dict[str, str]:
    queries: dict[str, str] = {}
    for path in sorted(SQL_DIR.glob(f"*.{vendor}.sql")):
        for name, body in parse_blocks(path.read_text()).items():
            if name in queries:
                raise ValueError(f"SQL block {name!r} defined twice for {vendor}")
            queries[name] = body
    for name, body in queries.items():
        queries[name] = _INCLUDE.sub(lambda m: queries[m.group(1)], body)
    return queries


def sql(connection: BaseDatabaseWrapper, name: str) -> str:
    """The named query for ``connection``'s vendor ("postgresql" or "sqlite")."""
    queries = load(connection.vendor)
    try:
        return queries[name]
    except KeyError:
        raise KeyError(f"no SQL block {name!r} for {connection.vendor}") from None
