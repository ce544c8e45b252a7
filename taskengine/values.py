"""The one rule for what a job may store: every argument, key and text option, on both
databases, however the job is made (``enqueue``, ``enqueue_many``, a schedule's slot
job) and when a schedule is defined (``TASKENGINE["SCHEDULES"]``, ``Schedule.clean``).

What PostgreSQL cannot keep is refused on SQLite too: text with a NUL or a surrogate
code point, NaN and infinity, more than MAX_NESTING levels of lists and dicts, bytes
that are not UTF-8, keys that JSON would merge, values that are not JSON at all. The
walk that checks is the copy into JSON-ready values enqueue makes anyway. A finished
attempt's return value follows the same rule (``return_value_json``), and its error text
is written so that any database can hold it (``storable_text``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from math import isfinite as _isfinite
from typing import Any

from .compat import normalize_json

MAX_NESTING = 100  # levels of lists and dicts in one argument (see docs/tasks.md)

# What no stored text may contain, on either database: NUL (PostgreSQL's text and jsonb
# cannot hold it; libpq would cut the text short there) and surrogate code points (not
# Unicode text: jsonb rejects their escapes, UTF-8 cannot encode them; SQLite would keep
# them, so they are refused there too, to keep one rule).
_UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored, or None: the one rule for every stored string."""
    if "\x00" in text:
        return f"{shown(text)} contains a NUL character (\\u0000), which PostgreSQL cannot store"
    found = None if text.isascii() else _UNSTORABLE_CHARACTER.search(text)
    if found is not None:
        return (
            f"{shown(text)} contains a lone surrogate ({found.group()!r}), which is not "
            "Unicode text (PostgreSQL cannot store it)"
        )
    return None


def stored_text_problem(text: str, limit: int) -> str | None:
    """Why ``text`` cannot be stored in a column of ``limit`` characters, or None:
    text_problem's rule, then the length (enqueue's check of a job's text options, and
    a schedule's and a queue's names and tenants)."""
    problem = text_problem(text)
    if problem is None and len(text) > limit:
        problem = f"{shown(text)} is longer than {limit} characters"
    return problem


# A job's priority range: django.tasks' TASK_MIN_PRIORITY..TASK_MAX_PRIORITY, and the job
# table's check constraint (taskengine_job_priority_range).
MIN_PRIORITY, MAX_PRIORITY = -100, 100


def priority_problem(priority: object) -> str | None:
    """Why ``priority`` is not a job's priority (a whole number in -100..100), or None."""
    if not isinstance(priority, int) or isinstance(priority, bool):
        return f"the priority must be a whole number from {MIN_PRIORITY} to {MAX_PRIORITY}, not {priority!r}"
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        return f"the priority {priority} is outside {MIN_PRIORITY}..{MAX_PRIORITY}"
    return None


def shown(value: str | bytes) -> str:
    """The start of a hostile value, for an error message (it may be a megabyte long)."""
    return repr(value[:40]) + ("…" if len(value) > 40 else "")


class _TooDeep(ValueError):
    pass


def json_ready(value: Any, depth: int = 0) -> Any:
    """``normalize_json(value)`` (django.tasks' own normalisation), with the exact
    built-in types handled directly (its ABC checks cost more than the copy when
    thousands of jobs are enqueued at once); anything else goes through normalize_json
    itself, so the result is the same.
    Raises ValueError for what cannot be stored as it is on both databases (see
    text_problem, non-finite floats, more than MAX_NESTING levels); the walk is the one
    the copy makes anyway, so enqueue never serialises twice to check."""
    kind = type(value)
    if kind is str:
        # text_problem's rule, inlined for the common case: ASCII text can only hold NUL.
        if ("\x00" in value) if value.isascii() else _UNSTORABLE_CHARACTER.search(value) is not None:
            raise ValueError(text_problem(value))
        return value
    if kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if _isfinite(value):
            return value
        raise ValueError(f"{value!r} is not a finite number (JSON has no NaN or infinity)")
    if kind is list or kind is tuple:
        if depth == MAX_NESTING:
            raise _TooDeep(f"nested more than {MAX_NESTING} levels deep")
        depth += 1
        return [json_ready(item, depth) for item in value]
    if kind is dict:
        if depth == MAX_NESTING:
            raise _TooDeep(f"nested more than {MAX_NESTING} levels deep")
        depth += 1
        ready = {json_ready(key, depth): json_ready(item, depth) for key, item in value.items()}
        if len(ready) > 1 and any(type(key) is not str for key in ready):
            _refuse_colliding_keys(ready)
        return ready
    if kind is bytes:
        try:
            value = value.decode("utf-8")  # what normalize_json does with bytes
        except UnicodeDecodeError:
            raise ValueError(f"{shown(value)} are bytes that are not UTF-8 text") from None
        return json_ready(value, depth)
    normalised = normalize_json(value)  # subclasses, other Mappings/Sequences
    if type(normalised) is list or type(normalised) is dict:
        return json_ready(normalised, depth)  # now built-in containers: their items get checked
    if isinstance(normalised, str) and (problem := text_problem(normalised)):
        raise ValueError(problem)
    if isinstance(normalised, float) and not _isfinite(normalised):
        raise ValueError(f"{normalised!r} is not a finite number (JSON has no NaN or infinity)")
    return normalised


def _refusal(value: Any, depth: int) -> Exception | None:
    try:
        json_ready(value, depth)
    except (TypeError, ValueError, RecursionError) as exc:
        return exc
    return None


def _describe_place(value: Any, where: str, depth: int = 0) -> str:
    """Where in ``value`` (named ``where``) the innermost unstorable thing is, and why.
    The slow path: run only once json_ready has refused the value."""
    refusal = _refusal(value, depth)
    if isinstance(refusal, (_TooDeep, RecursionError)):
        return f"{where} is nested more than {MAX_NESTING} levels deep"
    if refusal is None or isinstance(value, (str, bytes)):
        return f"{where}: {refusal}"
    if isinstance(value, Mapping):
        for key, item in value.items():
            if _refusal(key, depth + 1) is not None:
                return _describe_place(key, f"a key of {where}", depth + 1)
            if _refusal(item, depth + 1) is not None:
                return _describe_place(item, f"{where}[{key!r}]", depth + 1)
    elif isinstance(value, Sequence):
        for index, item in enumerate(value):
            if _refusal(item, depth + 1) is not None:
                return _describe_place(item, f"{where}[{index}]", depth + 1)
    return f"{where}: {refusal}"


def _refuse_colliding_keys(mapping: dict[Any, Any]) -> None:
    """JSON keys are text: json.dumps writes 1 and "1" (or True and "true") as the same
    key, and the database keeps only the last — part of the value would be lost."""
    seen: dict[str, Any] = {}
    for key in mapping:
        as_json = next(iter(json.loads(json.dumps({key: None}))))
        if as_json in seen:
            raise ValueError(f"its keys {seen[as_json]!r} and {key!r} are the same JSON key {as_json!r}")
        seen[as_json] = key


def ready_arguments(args: Sequence[Any], kwargs: Mapping[Any, Any]) -> tuple[list[Any], dict[Any, Any]]:
    """A call's arguments as the job stores them (json_ready on each argument and
    keyword key). Raises TypeError, ValueError or RecursionError for what cannot be
    stored; describe_refusal says where and why."""
    return [json_ready(item) for item in args], {json_ready(key): json_ready(item) for key, item in kwargs.items()}


def describe_refusal(args: Sequence[Any], kwargs: Mapping[Any, Any], exc: BaseException) -> str:
    """Where in a call's arguments the innermost unstorable thing is, and why
    (``args[1]['to'][0]: 'a\\x00b' contains a NUL character …``); ``exc`` (what
    ready_arguments raised) when the place cannot be told. The slow path: run only once
    ready_arguments has refused the arguments."""
    try:
        for index, item in enumerate(args):
            if _refusal(item, 0) is not None:
                return _describe_place(item, f"args[{index}]")
        for key, item in kwargs.items():
            if _refusal(key, 0) is not None:
                return _describe_place(key, "a key of kwargs")
            if _refusal(item, 0) is not None:
                return _describe_place(item, f"kwargs[{key!r}]")
    except Exception:
        pass
    return str(exc)


def arguments_problem(args: Sequence[Any], kwargs: Mapping[Any, Any]) -> str | None:
    """Why a call with these arguments could not be stored, naming the place, or None."""
    try:
        ready_arguments(args, kwargs)
    except (TypeError, ValueError, RecursionError) as exc:
        return describe_refusal(args, kwargs, exc)
    return None


# --- what a finished attempt stores ----------------------------------------------------

_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")  # \u0000 in JSON text, not an escaped backslash
_SURROGATE = re.compile("[\ud800-\udfff]")


def return_value_json(value: Any) -> str:
    """A return value as the JSON text its job row stores, or ValueError/TypeError when
    it is not JSON or PostgreSQL's jsonb would refuse it (refused on SQLite too, so a
    task behaves alike on both, by the rule enqueue applies to arguments).

    Characters are written as themselves (``ensure_ascii=False``), so a surrogate code
    point in a str — lone, or one of two that only look like a pair — stays visible to
    the check: escaped, two such code points would come back from jsonb as the one
    character they encode, which is not the value the handler returned."""
    if value is None:  # most handlers return nothing
        return "null"
    text = json.dumps(normalize_json(value), allow_nan=False, ensure_ascii=False)
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise ValueError("it contains a NUL character (\\u0000), which PostgreSQL's jsonb cannot store")
    if not text.isascii() and _SURROGATE.search(text):
        raise ValueError(
            "it contains a surrogate code point (such as a file name decoded with "
            "surrogateescape), which is not valid Unicode text and which PostgreSQL's jsonb "
            "cannot store"
        )
    return text


def storable_text(text: str) -> str:
    """Error text as a database text column can hold it: PostgreSQL text cannot contain
    NUL, and no database driver can encode a lone surrogate as UTF-8; an outcome that
    cannot be written would never finish its job. Both are written as escapes."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def ascii_text(text: str) -> str:
    return storable_text(text).encode("ascii", "backslashreplace").decode("ascii")
