"""The shipped alert rules are valid Prometheus rules, fire on the conditions they name
(promtool unit tests with input series) and only use metrics taskengine exports."""

from __future__ import annotations

import re
import subprocess

from prometheus_client import REGISTRY

from taskengine.observability import collectors, metrics  # noqa: F401 - registers the process metrics
from tests.observability.promscrape import ALERTS, HERE, promtool

REQUIRED_ALERTS = {
    "TaskengineHighFailureRate",
    "TaskengineExpiredLeasesNotRecovered",
    "TaskengineJobRunningTooLong",
    "TaskengineQueueAgeGrowing",
    "TaskengineNoLeader",
    "TaskengineMigrationGateClosed",
    "TaskengineDatabaseErrors",
}


def test_alert_rules_pass_promtool_check_rules():
    done = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_alert_rules_fire_on_their_conditions_in_promtool_unit_tests():
    done = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"], cwd=HERE, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_cover_the_required_conditions_with_exported_metrics():
    text = ALERTS.read_text()
    alerts = set(re.findall(r"^\s*- alert: (\w+)", text, re.MULTILINE))
    assert alerts >= REQUIRED_ALERTS
    exported = {name for name in REGISTRY._names_to_collectors if name.startswith("taskengine_")}
    exported |= {family.name for family in collectors.EngineCollector().describe()}
    used = set(re.findall(r"\btaskengine_[a-z_]+", text))
    assert used, "no taskengine metric referenced"
    assert used <= exported, f"alerts use metrics nobody exports: {sorted(used - exported)}"
    for alert in alerts:
        anchor = alert.lower()
        assert f"docs/observability.md#{anchor}" in text, f"{alert} has no runbook link"


def test_grafana_dashboard_queries_are_valid_promql_over_exported_metrics(tmp_path):
    import json

    dashboard = json.loads((ALERTS.parent / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    rules = "groups:\n  - name: dashboard\n    rules:\n" + "".join(
        f"      - record: dashboard:panel_{i}\n        expr: {json.dumps(e)}\n" for i, e in enumerate(exprs)
    )
    (tmp_path / "dashboard_rules.yml").write_text(rules)
    done = subprocess.run(
        [promtool(), "check", "rules", str(tmp_path / "dashboard_rules.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    exported = {name for name in REGISTRY._names_to_collectors if name.startswith("taskengine_")}
    exported |= {family.name for family in collectors.EngineCollector().describe()}
    used = {m for e in exprs for m in re.findall(r"\btaskengine_[a-z_]+", e)}
    assert used <= exported, sorted(used - exported)


def test_the_observability_doc_describes_every_exported_metric():
    doc = (ALERTS.parent.parent / "observability.md").read_text()
    exported = {
        name.removesuffix("_total")
        for name in REGISTRY._names_to_collectors
        if name.startswith("taskengine_") and not name.endswith(("_created", "_bucket", "_count", "_sum"))
    }
    exported |= {family.name for family in collectors.EngineCollector().describe()}
    missing = sorted(name for name in exported if f"`{name}" not in doc)
    assert missing == []
