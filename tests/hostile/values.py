"""Hostile values shared by the tests in this package: each is either refused at the
door with a clear error or stored (and read back) exactly."""

from __future__ import annotations

from typing import Any

MEGABYTE = 1024 * 1024


def nested(levels: int, leaf: Any = "leaf") -> list:
    """``levels`` lists inside each other around ``leaf`` (built without recursion)."""
    value: Any = leaf
    for _ in range(levels):
        value = [value]
    return value


# Values no job may carry, with a word the error must use.
REFUSED = {
    "nul": ("acme\x00x", "NUL"),
    "lone_low_surrogate": ("bad \udcff end", "surrogate"),
    "lone_high_surrogate": ("\ud83d alone", "surrogate"),
    "nan": (float("nan"), "finite"),
    "infinity": (float("inf"), "finite"),
    "minus_infinity": (float("-inf"), "finite"),
    "nested_10000_levels": (nested(10_000), "nested"),
    "nested_101_levels": (nested(101), "nested"),
    "non_utf8_bytes": (b"\xff\xfe caf\xe9", "UTF-8"),
    "bytes_with_nul": (b"a\x00b", "NUL"),
}

# Values stored faithfully: (the value given, the value read back).
STORED = {
    "one_megabyte_string": ("é" + "x" * MEGABYTE + "☃", None),
    "astral_characters": ("emoji 😀 and \U0010ffff", None),
    "escaped_nul_text": ("\\u0000 and \\x00 are only text", None),
    "html": ("<script>alert('x')</script> & &amp;", None),
    "rtl_and_zero_width": ("\u202eevil\u202c \u200b\u200d\ufeff", None),
    "nested_97_levels": (nested(97), None),  # 100 levels where PLACES nests it in 3 more
    "utf8_bytes": ("café ☃".encode(), "café ☃"),
    "huge_integer": (10**300, None),
}


def read_back(kind: str) -> Any:
    given, expected = STORED[kind]
    return given if expected is None else expected
