"""The values of queue limits and concurrency keys (taskengine.limits): rates like
``100/m``, concurrency limits, and the checks of a task's concurrency options."""

from __future__ import annotations

import pytest

from taskengine import limits


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("100/m", (100, 60)), ("20/s", (20, 1)), ("5/h", (5, 3600)), (" 7 / s ", (7, 1))],
)
def test_parse_rate(text, parsed):
    assert limits.parse_rate(text) == parsed
    assert limits.parse_rate(limits.format_rate(*parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("100", "not a rate"),
        ("100/d", "not a rate"),
        ("-1/s", "not a rate"),
        ("1.5/s", "not a rate"),
        ("0/m", "at least 1 start"),
        ("99999999999/s", "at most"),
        ("", "not a rate"),
        (5, "not int"),
    ],
)
def test_parse_rate_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        limits.parse_rate(text)


def test_format_rate():
    assert limits.format_rate(100, 60) == "100/m"
    assert limits.format_rate(None, None) == ""


@pytest.mark.parametrize(("value", "parsed"), [("5", 5), (1, 1), ("none", None), ("None", None), (None, None)])
def test_parse_concurrency(value, parsed):
    assert limits.parse_concurrency(value) == parsed


@pytest.mark.parametrize(
    "value", ["0", 0, -3, "two", 1.5, True, "2**40", 2**40, float("inf"), float("-inf"), float("nan"), "9" * 5000]
)
def test_parse_concurrency_refuses(value):
    with pytest.raises(ValueError, match="concurrency limit"):
        limits.parse_concurrency(value)


@pytest.mark.parametrize(
    ("key", "limit", "message"),
    [
        ("a\x00b", None, "NUL character"),
        ("\udcff", None, "lone surrogate"),
        ("k" * 256, None, "255"),
        ("", None, "non-empty string"),
        (3, None, "non-empty string"),
        ("k", 0, "at least 1"),
        ("k", "2", "whole number"),
        ("k", True, "whole number"),
        (None, 2, "needs a concurrency_key"),
    ],
)
def test_concurrency_options_are_checked(key, limit, message):
    with pytest.raises(ValueError, match=message):
        limits.check_concurrency_options(key, limit, ValueError)


def test_concurrency_options_accepted_and_the_default_limit():
    limits.check_concurrency_options("acct-1", 3, ValueError)
    limits.check_concurrency_options(None, None, ValueError)
    assert limits.job_concurrency_limit("acct-1", None) == 1
    assert limits.job_concurrency_limit("acct-1", 4) == 4
    assert limits.job_concurrency_limit(None, None) is None


@pytest.mark.parametrize(
    ("parse", "value", "message"),
    [
        (limits.parse_rate, "9" * 5000 + "/s", "at most 2147483647 starts"),
        (limits.parse_rate, "x" * 100_000, "not a rate"),
        (limits.parse_concurrency, "9" * 100_000, "not a concurrency limit"),
        (limits.parse_concurrency, "9" * 4000, "at least 1"),
    ],
)
def test_a_huge_value_is_refused_with_a_short_clear_message(parse, value, message):
    with pytest.raises(ValueError, match=message) as exc:
        parse(value)
    assert len(str(exc.value)) < 200
