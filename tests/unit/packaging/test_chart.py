"""The Helm chart (charts/infera): lint, render, least-privilege RBAC, CRD copy, monitoring."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import packaging_support as ps
import pytest
import yaml
from packaging_support import CHART, REPO, by_kind, render, run_helm

OPERATOR_VERBS = {"get", "list", "watch", "create", "patch", "delete"}


def rules_of(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for o in by_kind(objs, kind) for r in o["rules"]]


def granted(rules: list[dict[str, Any]], group: str, resource: str) -> set[str]:
    verbs: set[str] = set()
    for r in rules:
        if group in r.get("apiGroups", []) and resource in r.get("resources", []):
            assert not r.get("resourceNames"), r
            verbs |= set(r["verbs"])
    return verbs


# ------------------------------------------------------------------------------------------- CRDs
def test_chart_crds_are_byte_copies_of_the_source() -> None:
    sources = sorted((REPO / "crds").glob("*.yaml"))
    copies = sorted((CHART / "crds").glob("*.yaml"))
    assert sources, "no CRDs in crds/"
    assert [p.name for p in copies] == [p.name for p in sources], (
        "charts/infera/crds/ out of sync: run charts/sync-crds.sh"
    )
    for src, dst in zip(sources, copies, strict=True):
        assert src.read_bytes() == dst.read_bytes(), f"{dst} differs from {src}: run charts/sync-crds.sh"


def test_sync_crds_check_mode_detects_drift(tmp_path: Path) -> None:
    """charts/sync-crds.sh --check fails on a drifted copy and the plain run repairs it (on a scratch tree)."""
    root = tmp_path / "repo"
    (root / "charts" / "infera" / "crds").mkdir(parents=True)
    (root / "crds").mkdir()
    script = root / "charts" / "sync-crds.sh"
    script.write_bytes((REPO / "charts" / "sync-crds.sh").read_bytes())
    (root / "crds" / "a.yaml").write_text("kind: CustomResourceDefinition\n")
    (root / "charts" / "infera" / "crds" / "a.yaml").write_text("kind: Old\n")
    (root / "charts" / "infera" / "crds" / "gone.yaml").write_text("kind: Gone\n")
    check = subprocess.run(["bash", str(script), "--check"], capture_output=True, text=True)
    assert check.returncode == 1 and "out of date" in check.stderr and "stale" in check.stderr
    assert subprocess.run(["bash", str(script)], capture_output=True).returncode == 0
    assert (root / "charts" / "infera" / "crds" / "a.yaml").read_text() == "kind: CustomResourceDefinition\n"
    assert not (root / "charts" / "infera" / "crds" / "gone.yaml").exists()
    assert subprocess.run(["bash", str(script), "--check"], capture_output=True).returncode == 0


# ------------------------------------------------------------------------------------------- lint
def test_helm_lint_strict(helm_bin: Path) -> None:
    for values in ([], ["--set", "operator.watchNamespaces={a,b}"],
                   ["--set", "metrics.podMonitor.enabled=true,metrics.prometheusRule.enabled=true,metrics.grafanaDashboard.enabled=true"]):  # fmt: skip
        proc = run_helm(helm_bin, "lint", "--strict", str(CHART), *values, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "0 chart(s) failed" in proc.stdout


def test_helm_lint_rejects_bad_values(helm_bin: Path) -> None:
    """values.schema.json is enforced (the lint is live)."""
    proc = run_helm(helm_bin, "lint", str(CHART), "--set", "operator.logFormat=xml", check=False)
    assert proc.returncode != 0 and "logFormat" in (proc.stdout + proc.stderr)


def test_more_than_one_replica_is_refused(helm_bin: Path) -> None:
    proc = run_helm(helm_bin, "template", "x", str(CHART), "--set", "replicaCount=2", check=False)
    assert proc.returncode != 0
    assert "replicaCount" in proc.stderr


# ------------------------------------------------------------------------------------------- operator
def test_default_render_is_cluster_wide(helm_bin: Path) -> None:
    objs = render(helm_bin)
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "ServiceAccount"], kinds
    dep = by_kind(objs, "Deployment")[0]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["python", "-m", "infera_operator"]
    assert "--all-namespaces" in c["args"] and "--standalone" in c["args"]
    assert not any(a.startswith("--namespace") for a in c["args"])
    assert c["image"] == "ghcr.io/infera-dev/infera-operator:0.1.0"
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    assert pod["serviceAccountName"] == "infera-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["livenessProbe"]["httpGet"]["port"] == "health"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["INFERA_LOG_FORMAT"] == "json"
    binding = by_kind(objs, "ClusterRoleBinding")[0]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "infera-operator", "namespace": "infera-system"}
    ]


def test_image_digest_and_values(helm_bin: Path) -> None:
    digest = "sha256:" + "a" * 64
    objs = render(helm_bin, f"image.digest={digest}", "operator.logFormat=text", "operator.prometheusUrl=http://prom:9090",
                  "operator.extraArgs={--verbose}")  # fmt: skip
    c = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == f"ghcr.io/infera-dev/infera-operator@{digest}"
    assert "--prometheus-url=http://prom:9090" in c["args"] and "--verbose" in c["args"]
    assert {e["name"]: e.get("value") for e in c["env"]}["INFERA_LOG_FORMAT"] == "text"


def test_runtime_image_value(helm_bin: Path) -> None:
    default = by_kind(render(helm_bin), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert not any(a.startswith("--runtime-image") for a in default["args"])
    objs = render(helm_bin, "operator.runtimeImage=registry.example/infera-runtime:1.2.3")
    c = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert "--runtime-image=registry.example/infera-runtime:1.2.3" in c["args"]


@pytest.mark.parametrize(
    "sets",
    [(), ("operator.watchNamespaces={a,b}", "operator.prometheusUrl=http://prom:9090",
          "operator.runtimeImage=r.example/rt:1", "operator.logLevel=debug")],
    ids=["default", "everything"],
)  # fmt: skip
def test_rendered_command_is_accepted_by_the_operator(helm_bin: Path, sets: tuple[str, ...]) -> None:
    """The container's args and env parse with the operator's own option parser, to the intended options."""
    from infera_operator.options import parse_args

    c = by_kind(render(helm_bin, *sets), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    opts = parse_args(c["args"], env)
    assert opts.standalone and opts.liveness == "http://0.0.0.0:8080/healthz"
    if sets:
        assert opts.namespaces == ("a", "b") and not opts.clusterwide
        assert opts.prometheus_url == "http://prom:9090" and opts.runtime_image == "r.example/rt:1"
        assert opts.log_level == "debug"
    else:
        assert opts.clusterwide and opts.log_format == "json" and opts.log_level == "info"


def test_rbac_is_least_privilege(helm_bin: Path) -> None:
    rules = rules_of(render(helm_bin), "ClusterRole")
    for r in rules:
        assert "*" not in r["verbs"] and "*" not in r["resources"] and "*" not in r["apiGroups"], r
        assert not r.get("nonResourceURLs"), r
        for res in r["resources"]:
            assert res not in {"secrets", "pods/exec", "pods/attach", "serviceaccounts/token", "nodes",
                               "roles", "rolebindings", "clusterroles", "clusterrolebindings"}, res  # fmt: skip
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(r["verbs"]), r
    assert granted(rules, "infera.dev", "inferenceservices") == {"get", "list", "watch"}
    assert granted(rules, "infera.dev", "inferenceservices/status") == {"get", "patch"}
    for group, res in [("", "configmaps"), ("", "services"), ("apps", "deployments")]:
        assert granted(rules, group, res) == OPERATOR_VERBS - {"delete"}, (group, res)  # GC deletes them
    assert granted(rules, "autoscaling", "horizontalpodautoscalers") == OPERATOR_VERBS
    assert granted(rules, "", "pods") == {"get", "list", "watch"}
    assert granted(rules, "", "events") == {"create"}
    assert granted(rules, "", "secrets") == set()
    # kopf watches CRDs (read-only); cluster-wide it has no need to watch Namespaces.
    assert granted(rules, "apiextensions.k8s.io", "customresourcedefinitions") == {"list", "watch"}
    assert granted(rules, "", "namespaces") == set()


def test_watched_namespaces_get_roles_not_cluster_roles(helm_bin: Path) -> None:
    objs = render(helm_bin, "operator.watchNamespaces={team-b,team-a,team-a}")
    # Cluster-wide, only what kopf itself needs: list/watch CRDs and Namespaces, nothing else.
    [discovery] = by_kind(objs, "ClusterRole")
    [discovery_binding] = by_kind(objs, "ClusterRoleBinding")
    assert discovery["metadata"]["name"] == "infera-operator-discovery"
    assert discovery_binding["roleRef"]["name"] == "infera-operator-discovery"
    assert discovery_binding["subjects"][0]["name"] == "infera-operator"
    assert granted(discovery["rules"], "apiextensions.k8s.io", "customresourcedefinitions") == {
        "list",
        "watch",
    }
    assert granted(discovery["rules"], "", "namespaces") == {"list", "watch"}
    assert sorted(res for r in discovery["rules"] for res in r["resources"]) == [
        "customresourcedefinitions",
        "namespaces",
    ]
    roles, bindings = by_kind(objs, "Role"), by_kind(objs, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "infera-operator",
        }
        assert b["subjects"][0]["namespace"] == "infera-system"
    cluster_rules = rules_of(objs, "ClusterRole")
    for r in cluster_rules:  # whatever stays cluster-wide is read-only and not about namespaced workloads
        assert set(r["verbs"]) <= {"get", "list", "watch"}, r
        assert set(r["resources"]).isdisjoint(
            {"configmaps", "services", "pods", "deployments", "inferenceservices"}
        ), r
    args = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args


def test_existing_service_account(helm_bin: Path) -> None:
    objs = render(helm_bin, "serviceAccount.create=false", "serviceAccount.name=ops")
    assert not by_kind(objs, "ServiceAccount")
    assert by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    assert by_kind(objs, "ClusterRoleBinding")[0]["subjects"][0]["name"] == "ops"


def test_include_crds_renders_the_crd(helm_bin: Path) -> None:
    crds = by_kind(render(helm_bin, include_crds=True), "CustomResourceDefinition")
    assert [c["metadata"]["name"] for c in crds] == ["inferenceservices.infera.dev"]


# ------------------------------------------------------------------------------------------- monitoring
@pytest.fixture(scope="module")
def monitoring(helm_bin: Path) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = render(helm_bin, "metrics.podMonitor.enabled=true", "metrics.prometheusRule.enabled=true",
                  "metrics.grafanaDashboard.enabled=true", "metrics.podMonitor.labels.release=kps")  # fmt: skip
    return objs


def metric_names(promql: Any, expr: str) -> set[str]:
    """Every metric name a PromQL expression selects (parsing fails on invalid PromQL)."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        cls = type(node).__name__
        if cls == "VectorSelector":
            names.add(node.name)
            return
        if cls == "MatrixSelector":
            walk(node.vector_selector)
            return
        for attr in ("expr", "lhs", "rhs", "param"):
            child = getattr(node, attr, None)
            if child is not None and not isinstance(child, str | int | float):
                walk(child)
        for child in getattr(node, "args", None) or []:
            walk(child)

    walk(promql.parse(expr))
    return names


def test_metric_name_walker_is_live(promql: Any) -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le) (rate(a_bucket{x="1"}[5m]))) / on() group_left b - -c offset 5m'
    )
    assert metric_names(promql, expr) == {"a_bucket", "b", "c"}
    with pytest.raises(ValueError):
        promql.parse("sum(rate(x[5m])")


def test_pod_monitor_selects_runtime_pods(monitoring: list[dict[str, Any]]) -> None:
    pm = by_kind(monitoring, "PodMonitor")[0]
    assert pm["metadata"]["labels"]["release"] == "kps"
    assert pm["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "infera-runtime",
        "app.kubernetes.io/managed-by": "infera-operator",
    }
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    ep = pm["spec"]["podMetricsEndpoints"][0]
    assert ep["port"] == "http" and ep["path"] == "/metrics"
    relabel = {r["targetLabel"]: r["sourceLabels"] for r in ep["relabelings"]}
    assert relabel["inferenceservice"] == ["__meta_kubernetes_pod_label_infera_dev_inferenceservice"]


def test_alerts_parse_and_use_contract_metrics(monitoring: list[dict[str, Any]], promql: Any) -> None:
    rule = by_kind(monitoring, "PrometheusRule")[0]
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"InferaNoReadyReplicas", "InferaTimeToFirstTokenHigh", "InferaHighErrorRate"} <= set(alerts)
    known = ps.runtime_series_names()
    for name, r in alerts.items():
        used = metric_names(promql, r["expr"])
        assert used and used <= known, (name, used - known)
        assert r["labels"]["severity"] in {"warning", "critical"}
        assert "{{ $labels.inferenceservice }}" in r["annotations"]["summary"], r["annotations"]
        assert r["for"].endswith("m")
    assert alerts["InferaTimeToFirstTokenHigh"]["expr"].rstrip().endswith("> 2")
    assert "infera_time_to_first_token_seconds_bucket" in alerts["InferaTimeToFirstTokenHigh"]["expr"]
    assert 'status=~"5.."' in alerts["InferaHighErrorRate"]["expr"]


def test_dashboard_queries_parse_and_cover_the_contract(
    monitoring: list[dict[str, Any]], promql: Any
) -> None:
    cm = by_kind(monitoring, "ConfigMap")[0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["infera-runtime.json"])
    assert dash == json.loads((CHART / "dashboards" / "infera-runtime.json").read_text())
    grafana_vars = {
        "$__rate_interval": "5m",
        "$namespace": "ns",
        "$inferenceservice": "svc",
        "$pod_regex": "p",
    }
    used: set[str] = set()
    titles = []
    for panel in dash["panels"]:
        titles.append(panel["title"])
        assert panel["datasource"]["uid"] == "${datasource}"
        for t in panel["targets"]:
            expr = t["expr"]
            for k, v in grafana_vars.items():
                expr = expr.replace(k, v)
            used |= metric_names(promql, expr)
    known = ps.runtime_series_names() | ps.DCGM_METRICS
    assert used <= known, used - known
    # Every runtime metric of the contract is on the dashboard (histograms through their buckets).
    for m in ps.RUNTIME_COUNTERS | ps.RUNTIME_GAUGES:
        assert m in used, m
    for h in ps.RUNTIME_HISTOGRAMS:
        assert f"{h}_bucket" in used, h
    assert "DCGM_FI_DEV_FB_USED" in used
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            metric_names(promql, var["definition"].replace("label_values(", "count(").replace("query_result(", "count(")
                         .replace(", namespace)", ")").replace(", inferenceservice)", ")").replace("$namespace", "ns")
                         .replace("$inferenceservice", "s"))  # fmt: skip
    for needed in (
        "Requests/s",
        "Tokens/s",
        "Time to first token",
        "Time per output token",
        "KV cache",
        "GPU memory",
    ):
        assert any(needed in t for t in titles), needed


def test_monitoring_is_off_by_default(helm_bin: Path) -> None:
    kinds = {o["kind"] for o in render(helm_bin)}
    assert not kinds & {"PodMonitor", "PrometheusRule", "ConfigMap"}


def test_values_schema_matches_values() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(schema["properties"]) == set(values), set(schema["properties"]) ^ set(values)
