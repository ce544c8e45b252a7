"""Queue limits and per-key concurrency: their values (docs/queues.md).

Three limits, all enforced inside the claim's transaction, on the database clock, by the
limited claim (taskengine/db/limited_claim.py):

- a queue's **concurrency** (``taskengine_queue.concurrency_limit``): at most N of its
  jobs running across the fleet. A dead worker's jobs are still running (state and
  lease) until recovery moves them, so they count;
- a queue's **rate** (``rate_limit`` starts per ``rate_period`` seconds): a fixed window
  aligned to the epoch on the database clock, counted in the queue row
  (``rate_window``, ``rate_count``) under the row's lock. Jobs over it stay queued;
- a job's **concurrency key** (``@task(concurrency_key=..., concurrency_limit=...)`` or
  ``.using(...)``): at most ``concurrency_limit`` (default 1) running jobs share a key,
  whatever their queue.

This module parses and checks them (``100/m``, a limit of at least 1, a key enqueue can
store); ``queues`` and the backend use it. It imports only the bottom layer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .values import shown, stored_text_problem

KEY_LOCK_NAMESPACE = 0x7465_6B79  # pg_try_advisory_xact_lock(namespace, hashtext(key)): "teky"
MAX_KEYS = 1024  # the keys one claim considers per queue (in key order: docs/queues.md)
MAX_KEY_LENGTH = 255  # Job.concurrency_key's length
PERIODS = {"s": 1, "m": 60, "h": 3600}
_RATE = re.compile(r"\s*(\d+)\s*/\s*(s|m|h)\s*")


# --- values ----------------------------------------------------------------------------


def parse_rate(text: str) -> tuple[int, int]:
    """``"100/m"`` -> (100, 60): starts per period of seconds (``/s``, ``/m``, ``/h``).
    Raises ValueError with the reason for anything else (a count below 1 included)."""
    if not isinstance(text, str):
        raise ValueError(f"a rate is text like '100/m', not {type(text).__name__}")
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a rate: {shown(text)} (a whole number of starts per s, m or h, like '100/m')")
    digits = match.group(1).lstrip("0") or "0"
    count = int(digits) if len(digits) <= 10 else 2**31  # more digits: past the limit (and int()'s own)
    if count < 1:
        raise ValueError(f"not a rate: {shown(text)} (at least 1 start per period)")
    if count > 2**31 - 1:
        raise ValueError(f"not a rate: {shown(text)} (at most {2**31 - 1} starts per period)")
    return count, PERIODS[match.group(2)]


def format_rate(count: int | None, period: int | None) -> str:
    """(100, 60) -> ``"100/m"``; no rate -> ``""``."""
    if count is None or period is None:
        return ""
    unit = {seconds: unit for unit, seconds in PERIODS.items()}.get(period)
    return f"{count}/{unit}" if unit else f"{count}/{period}s"


def parse_concurrency(value: Any) -> int | None:
    """A queue's concurrency limit: a whole number of at least 1, or ``none``/None to
    lift it. Raises ValueError otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, bool):
        raise ValueError("a concurrency limit is a whole number of at least 1 or 'none'")
    given = shown(value) if isinstance(value, str) else repr(value)
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite float (JSON's 1e999)
        raise ValueError(f"not a concurrency limit: {given} (a whole number of at least 1, or 'none')") from None
    if isinstance(value, float) and number != value:
        raise ValueError(f"not a concurrency limit: {given} (a whole number)")
    if number < 1 or number > 2**31 - 1:
        raise ValueError(f"not a concurrency limit: {given} (at least 1; 'none' lifts the limit)")
    return number


def check_concurrency_options(key: Any, limit: Any, error: Callable[[str], Exception]) -> None:
    """A task's ``concurrency_key`` and ``concurrency_limit``, by the stored-text rule:
    raises ``error(message)`` for a key that is not a non-empty string, has a NUL or a
    lone surrogate or is longer than 255 characters, and for a limit that is not a whole
    number of at least 1, or is given without a key."""
    if key is not None:
        if not isinstance(key, str) or not key:
            raise error("concurrency_key must be a non-empty string.")
        if (problem := stored_text_problem(key, MAX_KEY_LENGTH)) is not None:
            raise error(f"concurrency_key cannot be stored: {problem}.")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1 or limit > 2**31 - 1:
            raise error(f"concurrency_limit must be a whole number of at least 1, not {limit!r}.")
        if key is None:
            raise error("concurrency_limit needs a concurrency_key (the jobs it limits).")


def job_concurrency_limit(key: str | None, limit: int | None) -> int | None:
    """The limit a job stores: the task's, 1 when it has a key and no limit, None without a key."""
    if key is None:
        return None
    return 1 if limit is None else limit
