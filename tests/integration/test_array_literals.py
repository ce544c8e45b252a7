"""The worker's array parameters written as PostgreSQL array literals
(taskengine/db/postgresql/array_literals.py), read back by a real PostgreSQL server: every
value comes back as it went in, whatever it holds."""

from __future__ import annotations

import json
import math

import pytest
from django.db import DataError, connection

from taskengine.db.postgresql import array_literals as literal

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

AWKWARD_TEXTS = [
    "",
    "NULL",
    "null",
    'a "quoted" word',
    "back\\slash\\",
    '\\"',
    "{braces},and,commas",
    "  spaces  ",
    "new\nline\ttab\r",
    "ünïcødé ✓ 𝄞",
    None,
    "x" * 100_000,
]


def read_back(literal_text: str, cast: str):
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT %s::{cast}", [literal_text])
        return cursor.fetchone()[0]


def test_texts_come_back_exactly():
    assert read_back(literal.texts(AWKWARD_TEXTS), "text[]") == AWKWARD_TEXTS


def test_json_texts_come_back_as_their_values():
    values = ['{"a": "b \\" c"}', "null", '"\\\\"', "[1, 2.5]", None]
    back = read_back(literal.texts(values), "jsonb[]")  # Django reads jsonb as its text
    assert [None if v is None else json.loads(v) for v in back] == [{"a": 'b " c'}, None, "\\", [1, 2.5], None]
    assert back[1] == "null" and back[4] is None  # JSON null is not SQL NULL


def test_integers_and_floats_come_back_exactly():
    ids = [1, 2**62, -5, 0]
    assert read_back(literal.integers(ids), "bigint[]") == ids
    delays = [0.0, 0.1, 1e-300, 123456.789, 2.5e15]
    assert read_back(literal.floats(delays), "float8[]") == delays
    nan, inf, minus_inf = read_back(literal.floats([math.nan, math.inf, -math.inf]), "float8[]")
    assert math.isnan(nan) and inf == math.inf and minus_inf == -math.inf


def test_empty_arrays():
    assert read_back(literal.integers([]), "bigint[]") == []
    assert read_back(literal.texts([]), "text[]") == []


def test_a_nul_is_refused_before_anything_is_sent():
    with pytest.raises(DataError, match="NUL"):
        read_back(literal.texts(["a\x00b"]), "text[]")
