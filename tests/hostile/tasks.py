"""Handlers for the hostile-values tests (importable by worker subprocesses)."""

from __future__ import annotations

from taskengine.compat import task

from .values import MEGABYTE, nested


@task
def echo(*args, **kwargs) -> list:
    return [list(args), kwargs]


RETURNED = {
    "one_megabyte_string": "é" + "x" * MEGABYTE + "☃",
    "astral_characters": "emoji 😀 and \U0010ffff",
    "html": "<script>alert('x')</script>",
    "nested_100_levels": nested(100),
    "nul": "text with \x00 inside",
    "lone_surrogate": "bad \udcff end",
    "nan": float("nan"),
    "nested_10000_levels": nested(10_000),
    "unserialisable": object(),
}

RAISED = {
    "one_megabyte_message": "é" + "x" * MEGABYTE + "☃",
    "html_message": "<script>alert('x')</script>",
    "nul_message": "bad \x00 byte",
    "lone_surrogate_message": "bad \udcff end",
    "non_utf8_bytes_message": b"\xff\xfe",
}


@task(max_attempts=1)
def returns(kind: str):
    return RETURNED[kind]


class HostileError(Exception):
    pass


@task(max_attempts=1)
def raises(kind: str):
    raise HostileError(RAISED[kind])


@task(max_attempts=1)
def encodes_a_surrogate():
    # What a file name decoded with surrogateescape does when it meets UTF-8: the error
    # carries the surrogate in its .object.
    "name-\udcff.txt".encode("utf-8")
