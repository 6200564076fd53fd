"""The chart's monitoring: alert rules under promtool, ServiceMonitor, Grafana dashboard.

Alerts and dashboard may only use metrics the operator really exposes; the set comes from
the operator's own registry, not from a list kept here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from hyper2kvm_operator.api import Phase
from hyper2kvm_operator.metrics import JobView, OperatorMetrics, Snapshot
from tests.chart.helm import helm_binary, render

pytestmark = pytest.mark.needs("promtool")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "hyper2kvm"
PROMTOOL_TESTS = Path(__file__).with_name("alert_rules_test.yaml")
NAMESPACE = "hyper2kvm-system"
SERVICE = "test-hyper2kvm-metrics"  # the metrics Service of release "test": its scrape job

RULE = "templates/prometheusrule.yaml"
MONITOR = "templates/servicemonitor.yaml"
DASHBOARD = "templates/grafana-dashboard.yaml"
ALERTS = {
    "Hyper2kvmJobsFailing",
    "Hyper2kvmJobQueuedTooLong",
    "Hyper2kvmJobRunningTooLong",
    "Hyper2kvmJobNoProgress",
    "Hyper2kvmOperatorDown",
    "Hyper2kvmReconcileErrors",
}


def rendered(template: str, *set_args: str) -> dict[str, Any]:
    objects = render(*set_args, only=(template,))
    assert len(objects) == 1, objects
    return objects[0]


def prometheus_rule(*set_args: str) -> dict[str, Any]:
    return rendered(RULE, "metrics.prometheusRule.enabled=true", *set_args)


def alert_rules(*set_args: str) -> dict[str, dict[str, Any]]:
    groups = prometheus_rule(*set_args)["spec"]["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def dashboard_configmap(*set_args: str) -> dict[str, Any]:
    return rendered(DASHBOARD, "grafana.dashboard.enabled=true", *set_args)


# ------------------------------------------------------------------------------ promtool


def promtool() -> str:
    found = shutil.which("promtool")
    assert found is not None  # the suite checks its needs before it starts
    return found


def run_promtool(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=300
    )
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """The rendered rule groups as a Prometheus rules file, next to the promtool tests."""
    groups = prometheus_rule()["spec"]["groups"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    shutil.copy(PROMTOOL_TESTS, tmp_path / PROMTOOL_TESTS.name)
    return tmp_path


def test_rules_pass_promtool_check(rules_dir: Path) -> None:
    run_promtool("check", "rules", "rules.yaml", cwd=rules_dir)


def test_rules_pass_their_promtool_unit_tests(rules_dir: Path) -> None:
    run_promtool("test", "rules", PROMTOOL_TESTS.name, cwd=rules_dir)


def test_promtool_tests_see_every_alert_fire_and_stay_quiet() -> None:
    spec = yaml.safe_load(PROMTOOL_TESTS.read_text())
    assert spec["rule_files"] == ["rules.yaml"]
    cases = [case for test in spec["tests"] for case in test.get("alert_rule_test", [])]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if case.get("exp_alerts") == []}
    assert set(alert_rules()) == ALERTS
    assert firing == ALERTS
    assert quiet == ALERTS


# ------------------------------------------------------------------- rules and values


def test_every_alert_has_severity_summary_and_description() -> None:
    for name, rule in alert_rules("metrics.prometheusRule.severity=critical").items():
        assert rule["labels"] == {"severity": "critical"}, name
        assert set(rule["annotations"]) == {"summary", "description"}, name
        assert all(text.strip() for text in rule["annotations"].values()), name


def test_thresholds_come_from_values() -> None:
    rules = alert_rules(
        "metrics.prometheusRule.queuedTooLong=90m",
        "metrics.prometheusRule.runningTooLong=1d",
        "metrics.prometheusRule.noProgressFor=1h30m",
        "metrics.prometheusRule.operatorDownFor=10m",
    )
    assert rules["Hyper2kvmJobQueuedTooLong"]["expr"].endswith("> 5400")
    assert rules["Hyper2kvmJobRunningTooLong"]["expr"].endswith("> 86400")
    stalled = rules["Hyper2kvmJobNoProgress"]["expr"]
    assert "[1h30m]" in stalled
    assert re.search(r"> 5400\s*\)$", stalled), stalled
    assert rules["Hyper2kvmOperatorDown"]["for"] == "10m"
    assert "longer than 90m" in rules["Hyper2kvmJobQueuedTooLong"]["annotations"]["description"]


def test_defaults() -> None:
    rules = alert_rules()
    assert rules["Hyper2kvmJobQueuedTooLong"]["expr"].endswith("> 7200")
    assert rules["Hyper2kvmJobRunningTooLong"]["expr"].endswith("> 43200")
    assert "[15m]" in rules["Hyper2kvmJobNoProgress"]["expr"]
    assert rules["Hyper2kvmOperatorDown"]["for"] == "5m"
    assert {rule["labels"]["severity"] for rule in rules.values()} == {"warning"}


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [
        ("45s", "45"),
        ("1h30m", "5400"),
        ("1500ms", "1.500"),
        ("2w", "1209600"),
        ("1y", "31536000"),
    ],
)
def test_durations_become_seconds(duration: str, seconds: str) -> None:
    rules = alert_rules(f"metrics.prometheusRule.queuedTooLong={duration}")
    assert rules["Hyper2kvmJobQueuedTooLong"]["expr"].endswith(f"> {seconds}")


@pytest.mark.parametrize("schema", ["checked", "skipped"])
def test_a_threshold_that_is_not_a_duration_fails_the_render(schema: str) -> None:
    argv = [str(helm_binary()), "template", "test", str(CHART), "--show-only", RULE]
    argv += ["--set", "metrics.prometheusRule.enabled=true"]
    argv += ["--set", "metrics.prometheusRule.queuedTooLong=2 hours"]
    if schema == "skipped":  # the template's own check, for installs that skip the schema
        argv.append("--skip-schema-validation")
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode != 0
    assert "queuedTooLong" in done.stderr


def test_rule_labels_and_release_scoping() -> None:
    rule = prometheus_rule("metrics.prometheusRule.labels.release=kube-prometheus")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus"
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert [group["name"] for group in rule["spec"]["groups"]] == ["hyper2kvm"]
    for group in rule["spec"]["groups"]:
        for alert in group["rules"]:
            matchers = re.findall(r"\{([^}]*)\}", alert["expr"])
            assert matchers, alert["alert"]
            for matcher in matchers:  # never another release's series
                assert f'job="{SERVICE}", namespace="{NAMESPACE}"' in matcher, alert["alert"]


# --------------------------------------------------------------------- ServiceMonitor


def test_service_monitor_scrapes_the_metrics_service() -> None:
    objects = render(
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.interval=15s",
        "metrics.serviceMonitor.scrapeTimeout=5s",
        "metrics.serviceMonitor.labels.release=kube-prometheus",
        only=(MONITOR, "templates/service.yaml"),
    )
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    service = next(o for o in objects if o["kind"] == "Service")
    # The alerts' job="..." is the Service's name: what Prometheus names the scrape job.
    assert service["metadata"]["name"] == SERVICE
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert selector == {
        "app.kubernetes.io/name": "hyper2kvm",
        "app.kubernetes.io/instance": "test",
        "app.kubernetes.io/component": "operator",
    }
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [port["name"] for port in service["spec"]["ports"]]
    assert (endpoint["port"], endpoint["interval"], endpoint["scrapeTimeout"]) == (
        "metrics",
        "15s",
        "5s",
    )
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"


# ------------------------------------------------------------------------- toggles


@pytest.mark.parametrize(
    ("template", "toggle", "kind"),
    [
        (RULE, "metrics.prometheusRule.enabled", "PrometheusRule"),
        (MONITOR, "metrics.serviceMonitor.enabled", "ServiceMonitor"),
        (DASHBOARD, "grafana.dashboard.enabled", "ConfigMap"),
    ],
)
def test_each_object_follows_its_toggle(template: str, toggle: str, kind: str) -> None:
    assert render(only=(template,)) == []
    assert render(f"{toggle}=false", only=(template,)) == []
    objects = render(f"{toggle}=true", only=(template,))
    assert [o["kind"] for o in objects] == [kind]
    assert objects[0]["metadata"]["namespace"] == NAMESPACE
    assert objects[0]["metadata"]["labels"]["app.kubernetes.io/instance"] == "test"


# ------------------------------------------------------------------------- dashboard


def dashboard() -> dict[str, Any]:
    configmap = dashboard_configmap()
    data: dict[str, Any] = json.loads(configmap["data"]["hyper2kvm.json"])
    return data


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in board["panels"]:
        found += [panel, *panel.get("panels", [])]  # collapsed rows hold their panels
    return found


def test_dashboard_configmap_carries_the_sidecar_label_and_the_file() -> None:
    configmap = dashboard_configmap(
        "grafana.dashboard.label=example.com/dashboard",
        "grafana.dashboard.labelValue=yes",
        "grafana.dashboard.annotations.grafana_folder=Migrations",
    )
    assert configmap["metadata"]["labels"]["example.com/dashboard"] == "yes"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Migrations"}
    assert list(configmap["data"]) == ["hyper2kvm.json"]
    shipped = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    assert json.loads(configmap["data"]["hyper2kvm.json"]) == shipped
    default = dashboard_configmap()["metadata"]["labels"]
    assert default["grafana_dashboard"] == "1"


def test_dashboard_is_stable_and_uses_the_datasource_variable() -> None:
    board = dashboard()
    assert board["uid"] == "hyper2kvm-overview"
    assert board["schemaVersion"] == 39
    assert board.get("id") is None
    assert not {"iteration", "created", "updated"} & board.keys()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}"


# ---------------------------------------------------- metric names the operator exposes


def exposed_metric_names() -> set[str]:
    """Every sample name the operator's registry writes, with one job per phase."""
    jobs = {f"vms/vm-{p.value.lower()}": JobView(phase=p.value, node="n1") for p in Phase}
    snapshot = Snapshot(jobs=jobs, slots={"n1": 2}, active={"n1": 1})
    metrics = OperatorMetrics(lambda: snapshot)
    metrics.reconcile_errors.labels("admit").inc()
    metrics.api_writes.inc()
    metrics.scheduling_latency.observe(0.2)
    metrics.status_lag.observe(0.02)
    metrics.outcomes.labels(Phase.FAILED.value).inc()
    text = generate_latest(metrics.registry).decode()
    names = {
        match.group(0)
        for line in text.splitlines()
        if line and not line.startswith("#")
        if (match := re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line))
    }
    return names | {"up"}


# Words in PromQL that are not metric names: functions, aggregations, operators.
# fmt: off
PROMQL_WORDS = {
    "abs", "absent", "and", "avg", "avg_over_time", "bool", "bottomk", "ceil", "changes",
    "clamp_max", "clamp_min", "count", "delta", "deriv", "floor", "histogram_quantile", "idelta",
    "increase", "inf", "irate", "label_replace", "max", "max_over_time", "min", "min_over_time",
    "nan", "offset", "or", "rate", "resets", "round", "scalar", "sort", "sort_desc", "sum", "time",
    "topk", "unless", "vector",
}
# fmt: on


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (labels, strings and ranges removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    words = re.findall(r"(?<![\w$.])[a-zA-Z_:][a-zA-Z0-9_:]*", text)
    return {word for word in words if word.lower() not in PROMQL_WORDS}


def test_metric_name_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{job="x", le!="1"}[$__rate_interval])))'
        ' - on (job) b_total offset 5m and absent(up{job="y"}) > bool 1e3'
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "up"}


def dashboard_exprs(board: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for panel in panels(board) for t in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            assert match is not None, query
            exprs.append(match.group(1))
    return exprs


def test_alerts_read_only_metrics_the_operator_exposes() -> None:
    exposed = exposed_metric_names()
    for name, rule in alert_rules().items():
        used = metric_names(rule["expr"])
        assert used, name
        assert used <= exposed, f"{name} reads {sorted(used - exposed)}"


def test_dashboard_reads_only_metrics_the_operator_exposes() -> None:
    exposed = exposed_metric_names()
    used: set[str] = set()
    for expr in dashboard_exprs(dashboard()):
        names = metric_names(expr)
        assert names, expr
        assert names <= exposed, f"{expr} reads {sorted(names - exposed)}"
        used |= names
    assert {
        "hyper2kvm_jobs",
        "hyper2kvm_queue_depth",
        "hyper2kvm_job_throughput_bytes_per_second",
        "hyper2kvm_job_progress_ratio",
        "hyper2kvm_node_active_workers",
        "hyper2kvm_node_slots",
        "hyper2kvm_scheduling_latency_seconds_bucket",
        "hyper2kvm_reconcile_errors_total",
    } <= used
