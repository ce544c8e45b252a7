"""What an attempt's outcome may hold: return values PostgreSQL's jsonb would refuse
fail the attempt; error text is escaped until any database can store it."""

from __future__ import annotations

import json

import pytest

from taskengine.values import return_value_json, storable_text

LONE = b"\xff".decode("utf-8", "surrogateescape")  # '\udcff'


@pytest.mark.parametrize(
    "value",
    [f"name-{LONE}", "\ud83d", "\ude00\ud83d", f"{LONE}\ud83d", "a\x00b", {"key": [f"x{LONE}"]}, {f"k{LONE}": 1}],
)
def test_return_values_jsonb_refuses_are_rejected(value):
    with pytest.raises(ValueError):
        return_value_json(value)


def test_two_surrogate_code_points_that_look_like_a_pair_are_rejected_not_stored_as_one_character():
    # Escaped, "\ud83d\ude00" would come back from jsonb as the single character U+1F600.
    with pytest.raises(ValueError, match="surrogate"):
        return_value_json("\ud83d\ude00")


@pytest.mark.parametrize("value", ["plain", "é", "\U0001f600", "\\udcff", "\\u0000", {"k": ["\U0001f600", 1]}])
def test_valid_text_and_escaped_backslashes_are_accepted(value):
    assert json.loads(return_value_json(value)) == value


def test_error_text_with_nul_and_lone_surrogates_is_escaped_and_encodable():
    text = storable_text(f"bad\x00 {LONE} é \U0001f600")
    assert text == "bad\\x00 \\udcff é \U0001f600"
    text.encode("utf-8")
