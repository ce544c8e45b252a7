"""Helpers for the observability tests: scrape a real /metrics over HTTP, read samples,
run promtool."""

from __future__ import annotations

import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parent.parent / "docs" / "observability" / "alerts.yml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def try_scrape(url: str) -> str | None:
    try:
        return scrape(url)
    except OSError:
        return None


class Samples:
    """The samples of one scrape, summed by name over the labels that match."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def names(self) -> set[str]:
        return {s.name for s in self.samples}

    def sum(self, name: str, **labels: str) -> float:
        return sum(
            s.value for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: bin/ensure-services installs Debian's prometheus package"
    return path


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


def listening_addresses(port: int) -> set[str]:
    """IPv4 addresses with a TCP socket listening on ``port`` (Linux /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found
