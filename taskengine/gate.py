"""Migration gate (placeholder until the gate work lands): always open."""
from __future__ import annotations


def is_ready(alias: str = "default") -> bool:
    return True


def wait_until_ready(alias: str = "default", *, timeout: float | None = None, stop=None) -> bool:
    return True


def reset() -> None:
    pass
