"""The array parameters of the worker's per-batch statements, as PostgreSQL array
literals written here.

A Python list handed to psycopg is adapted by its list dumper, in Python, element by
element (a dumper looked up and called per element, each text element escaped by a
regular expression): in a py-spy profile of the default worker draining no-op jobs
that was 17 % of its GIL time, for the nine arrays of a batch's finishes. The same
literal is a join here; the statements cast each parameter (``%(ids)s::bigint[]``), so
the server parses the literal exactly as it parses psycopg's.

Literal syntax (https://www.postgresql.org/docs/current/arrays.html, "Array Value
Input"): ``{a,b}``; an element in double quotes with ``\\`` and ``"`` escaped by a
backslash; ``NULL`` unquoted for a null. Every text element is quoted, so the string
``"NULL"`` stays a string. psycopg still checks the whole literal as it checks any text
parameter: a NUL or a lone surrogate in an element raises as it did for the list.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})


def integers(values: Iterable[int]) -> str:
    """``{1,2,3}``: a ``bigint[]`` or ``integer[]`` literal."""
    return "{" + ",".join([str(int(value)) for value in values]) + "}"


def floats(values: Iterable[float]) -> str:
    """A ``float8[]`` literal. A NaN or an infinity is written as PostgreSQL spells it,
    as psycopg would send it: what the statement does with one is the server's to say."""
    return "{" + ",".join([_float(float(value)) for value in values]) + "}"


def _float(number: float) -> str:
    if math.isfinite(number):
        return repr(number)
    if math.isnan(number):
        return "NaN"
    return "Infinity" if number > 0 else "-Infinity"


def texts(values: Iterable[str | None]) -> str:
    """A ``text[]`` (or ``jsonb[]``, of JSON texts) literal; None is NULL."""
    return "{" + ",".join([_text(value) for value in values]) + "}"


def _text(value: str | None) -> str:
    if value is None:
        return "NULL"
    if "\\" in value or '"' in value:
        value = value.translate(_ESCAPES)
    return '"' + value + '"'
