"""Leader-only maintenance services (recovery, schedules, dead workers, retention).

``build_services(worker)`` returns the background services runworker starts after it
registers. Placeholder until the leadership work lands: no services.
"""
from __future__ import annotations


def build_services(worker) -> list:
    return []
