"""``manage.py benchmark --help`` prints its help: argparse expands ``%`` in help strings,
so a literal percent sign must be written ``%%`` (a help string with "60%" made --help
raise TypeError)."""

from __future__ import annotations

from taskengine.management.commands.benchmark import Command


def test_benchmark_help_formats():
    text = " ".join(Command().create_parser("manage.py", "benchmark").format_help().split())
    assert "--sustained-rate" in text and "% of drain_default_per_s" in text
