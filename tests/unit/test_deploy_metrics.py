"""The monitoring files in deploy/: well formed, and using only the documented metrics.

The "Metrics" table of docs/operations.md is the list of metrics (the integration test
tests/integration/test_metrics.py checks that the services expose exactly those).
When promtool is on the PATH, it checks the rules, runs their unit tests and
parses every query of the dashboard.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from incidentledger.v1 import (
    audit_service_pb2,
    evidence_service_pb2,
    ledger_service_pb2,
    notifier_service_pb2,
    situation_service_pb2,
)
from services.common.config import PROJECT_ROOT
from tests.metrics_support import documented_metrics, metric_names_in

PROMETHEUS = PROJECT_ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yaml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yaml"
SCRAPE_CONFIG = PROMETHEUS / "prometheus.yaml"
K8S = PROJECT_ROOT / "deploy" / "k8s"
DASHBOARD = PROJECT_ROOT / "deploy" / "grafana" / "incident-ledger.json"
SEVERITIES = {"info", "warning", "critical"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    """Every query of every panel (rows included) of the dashboard."""
    found: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            found.extend(t["expr"] for t in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"])
    return found


def test_the_metrics_table_lists_each_service_s_metrics_with_a_known_type() -> None:
    documented = documented_metrics()
    assert {d.service for d in documented.values()} == {"ledger", "notifier"}
    assert {d.type for d in documented.values()} <= {"counter", "gauge", "histogram"}
    for d in documented.values():
        assert d.name.endswith("_total") == (d.type == "counter"), d.name


def test_metric_names_are_found_in_queries() -> None:
    expression = (
        "histogram_quantile(0.99, sum by (le) "
        '(rate(ledger_request_seconds_bucket{job="ledger"}[5m])))'
        " / notifier_deliveries_total - ledger_relay_lag_seconds"
    )
    assert metric_names_in(expression) == {
        "ledger_request_seconds",
        "notifier_deliveries_total",
        "ledger_relay_lag_seconds",
    }


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    assert len(rules) >= 10
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in rules:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        # What the operator is to do: the summary only says what is wrong.
        assert rule["annotations"].get("description"), f"{rule['alert']} has no description"
        assert metric_names_in(rule["expr"]), f"{rule['alert']} uses none of the services' metrics"


def test_alerts_cover_what_operators_must_hear_about() -> None:
    used = set().union(*(metric_names_in(rule["expr"]) for rule in alert_rules()))
    for name in (
        "ledger_relay_lag_seconds",
        "ledger_relay_connected",
        "ledger_relay_leader",
        "ledger_projection_lag_seconds",
        "notifier_deliveries_total",
        "notifier_dead_letters",
        "notifier_webhook_oldest_waiting_seconds",
        "notifier_webhook_failing_seconds",
        "notifier_nats_connected",
        "notifier_consumer_pending_events",
        "ledger_requests_total",
        "ledger_request_seconds",
        "notifier_requests_total",
        "notifier_request_seconds",
    ):
        assert name in used, name


def streaming_methods() -> set[str]:
    """The methods (by name) whose calls are streams: their duration is the stream's life."""
    return {
        method.name
        for module in (
            audit_service_pb2,
            evidence_service_pb2,
            ledger_service_pb2,
            notifier_service_pb2,
            situation_service_pb2,
        )
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if method.client_streaming or method.server_streaming
    }


def test_latency_quantiles_leave_out_every_streaming_method() -> None:
    # An evidence upload from the field, or a whole-ledger verification, lasts as long as its
    # stream: a p99 that included them would show the links' speed as the commands' latency
    # and fire "Commands wait on the database's commits".
    streams = streaming_methods()
    assert {"StreamEvents", "StreamVerifyLedger", "UploadEvidence", "Subscribe"} <= streams
    quantiles = [r["expr"] for r in alert_rules() if "histogram_quantile" in r["expr"]]
    quantiles += [e for e in dashboard_exprs() if "histogram_quantile" in e]
    assert quantiles
    for expr in quantiles:
        excluded = re.search(r'method!~"([^"]*)"', expr)
        assert excluded, expr
        pattern = re.compile(excluded[1])
        service = "ledger" if "ledger_request_seconds" in expr else "notifier"
        for name in streams:
            # Each service's own methods; a pattern leaving out another's does no harm.
            if service == "notifier" and name != "Subscribe":
                continue
            if service == "ledger" and name == "Subscribe":
                continue
            assert pattern.fullmatch(f"/incidentledger.v1.AnyService/{name}"), (name, expr)


def test_deploy_files_use_only_documented_metrics() -> None:
    documented = set(documented_metrics())
    used_by: dict[str, set[str]] = {
        "alerts.yaml": set().union(*(metric_names_in(rule["expr"]) for rule in alert_rules())),
        "alerts_test.yaml": set().union(
            *(
                metric_names_in(series["series"])
                for test in load_yaml(ALERTS_TEST)["tests"]
                for series in test["input_series"]
            )
        ),
        "incident-ledger.json": set().union(*(metric_names_in(e) for e in dashboard_exprs())),
    }
    for source, used in used_by.items():
        assert used, source
        assert used <= documented, f"{source} uses undocumented metrics: {used - documented}"
    # The dashboard shows every metric: a new metric gets a panel.
    assert used_by["incident-ledger.json"] == documented


def test_dashboard_panels_have_unique_ids_and_a_prometheus_data_source() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert dashboard["templating"]["list"][0]["query"] == "prometheus"
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


def test_scrape_config_scrapes_both_services_and_loads_the_rules() -> None:
    config = load_yaml(SCRAPE_CONFIG)
    assert [PROMETHEUS / f for f in config["rule_files"]] == [ALERTS]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"incident-ledger", "incident-notifier"} <= jobs


def kubernetes_scrape_example() -> dict[str, Any]:
    """The commented-out Kubernetes job of prometheus.yaml, as Prometheus would read it."""
    text = SCRAPE_CONFIG.read_text(encoding="utf-8")
    commented = text[text.index("# - job_name: incident-ledger-pods") :].splitlines()
    (job,) = yaml.safe_load("\n".join(line.strip()[2:] for line in commented if line.strip()))
    assert isinstance(job, dict)
    return job


def test_the_kubernetes_scrape_example_names_the_pods_labels_and_annotations() -> None:
    """It took the job from the pods' label `app`, which no manifest sets (they set
    app.kubernetes.io/name): every target's job was empty."""
    job = kubernetes_scrape_example()
    templates = [
        doc["spec"]["template"]["metadata"]
        for path in (K8S / "40-ledger.yaml", K8S / "50-notifier.yaml")
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc and doc["kind"] == "Deployment"
    ]
    assert len(templates) == 2
    for rule in job["relabel_configs"]:
        for source in rule["source_labels"]:
            for kind, meta in (("label", "labels"), ("annotation", "annotations")):
                prefix = f"__meta_kubernetes_pod_{kind}_"
                if source.startswith(prefix):
                    for template in templates:
                        # Prometheus's name of a label or annotation: [^a-zA-Z0-9_] as "_".
                        names = {re.sub(r"[^a-zA-Z0-9_]", "_", k) for k in template[meta]}
                        assert source.removeprefix(prefix) in names, (source, template)
    (to_job,) = [rule for rule in job["relabel_configs"] if rule.get("target_label") == "job"]
    assert to_job["source_labels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"]


@pytest.fixture
def promtool() -> str:
    """promtool from ``make test`` (tools/prometheus) or the PATH; CI must have it."""
    bundled = PROJECT_ROOT / "tools" / "prometheus" / "usr" / "bin" / "promtool"
    found = str(bundled) if bundled.exists() else shutil.which("promtool")
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI requires promtool: `make test` unpacks it into tools/prometheus")
        pytest.skip("promtool is not on the PATH (it comes with Prometheus)")
    return found


def run_promtool(promtool: str, *args: str | Path) -> None:
    done = subprocess.run(
        [promtool, *map(str, args)],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_accepts_the_rules_the_config_and_the_rule_tests(promtool: str) -> None:
    run_promtool(promtool, "check", "rules", ALERTS)
    run_promtool(promtool, "check", "config", SCRAPE_CONFIG)
    run_promtool(promtool, "test", "rules", ALERTS_TEST)


def test_promtool_parses_every_dashboard_query(promtool: str, tmp_path: Path) -> None:
    # Grafana's range variable is not PromQL: a fixed range stands in for it.
    rules = [
        {"record": f"dashboard:query_{n}", "expr": re.sub(r"\$__rate_interval", "5m", expr)}
        for n, expr in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool(promtool, "check", "rules", path)
