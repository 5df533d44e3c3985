"""The Helm chart installed into a real control plane, and the operator running with only the
chart's RBAC.

There is no image registry here, so the chart's operator pod is simulated by kwok (it turns Ready,
nothing runs in it). To show that the chart's ServiceAccount and (Cluster)Role are enough, the real
operator process (``python -m infera_operator``) runs on this machine authenticated *as that
ServiceAccount* (a bearer token from ``kubectl create token``), reconciles a sample
InferenceService, and must never be refused by the API server. Least privilege is checked the other
way round with ``kubectl auth can-i --as=system:serviceaccount:NS:SA``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import packaging_support as ps
import pytest
import yaml

from infera_testenv.cluster import Cluster

pytestmark = pytest.mark.integration

SAMPLE = ps.REPO / "e2e" / "examples" / "tiny-cpu-synthetic.yaml"
ISVC = "tiny"
T = TypeVar("T")


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 90.0, interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Install:
    release: str
    namespace: str  # the release's namespace (operator, ServiceAccount)
    service_account: str
    manifest: list[dict[str, Any]]

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.manifest)


def helm(
    helm_bin: Path, cluster: Cluster, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc: subprocess.CompletedProcess[str] = ps.run_helm(
        helm_bin, "--kubeconfig", str(cluster.kubeconfig), *args, check=check
    )
    return proc


@contextmanager
def installed(helm_bin: Path, cluster: Cluster, *set_args: str) -> Iterator[Install]:
    """``helm install`` the chart (CRD from the chart's crds/, applied first like on upgrade)."""
    release = f"r{uuid.uuid4().hex[:6]}"
    namespace = f"{release}-system"
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ps.CHART / "crds"))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/inferenceservices.infera.dev"
    )
    sets = [a for s in set_args for a in ("--set", s)]
    helm(helm_bin, cluster, "install", release, str(ps.CHART), "--namespace", namespace, "--create-namespace",
         "--wait", "--timeout", "120s", *sets)  # fmt: skip
    try:
        manifest = [d for d in yaml.safe_load_all(helm(helm_bin, cluster, "get", "manifest", release,
                                                       "-n", namespace).stdout) if d]  # fmt: skip
        sa = next(o["metadata"]["name"] for o in manifest if o["kind"] == "ServiceAccount")
        yield Install(release, namespace, sa, manifest)
    finally:
        helm(
            helm_bin,
            cluster,
            "uninstall",
            release,
            "-n",
            namespace,
            "--wait",
            "--timeout",
            "60s",
            check=False,
        )
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def can_i(cluster: Cluster, inst: Install, verb: str, resource: str, *where: str) -> bool:
    proc = cluster.kubectl("auth", "can-i", verb, resource, *where, f"--as={inst.user}", check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stderr
    return answer == "yes"


def service_account_kubeconfig(cluster: Cluster, inst: Install, path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount, with a token from TokenRequest."""
    token = cluster.kubectl(
        "create", "token", inst.service_account, "-n", inst.namespace, "--duration=1h"
    ).stdout.strip()
    assert token.count(".") == 2, "not a JWT"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": cluster.server,
                                               "certificate-authority": str(cluster.pki / "ca.crt")}}],
        "users": [{"name": inst.service_account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": inst.service_account}}],
        "current-context": "sa",
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    whoami = subprocess.run(["kubectl", f"--kubeconfig={path}", "auth", "whoami", "-o", "json"],
                            capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == inst.user
    return path


@dataclass
class Operator:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def operator_as(kubeconfig: Path, logdir: Path, *args: str) -> Iterator[Operator]:
    """``python -m infera_operator ARGS`` with only ``kubeconfig``'s credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env |= {
        "KUBECONFIG": str(kubeconfig),
        "PYTHONPATH": os.pathsep.join([str(ps.REPO / "operator"), env.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "INFERA_LOG_FORMAT": "text",
        "INFERA_METRICS_INTERVAL_SECONDS": "300",  # nothing listens on kwok pod IPs: do not scrape
    }
    log = logdir / "operator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "infera_operator", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        op = Operator(proc, log)
        try:
            yield op
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def reconciled_to_ready(cluster: Cluster, op: Operator, namespace: str) -> dict[str, Any]:
    """Apply the sample into ``namespace``; wait until the operator made its children and Ready=True."""
    cluster.kubectl("apply", "-n", namespace, "-f", str(SAMPLE))

    def ready() -> dict[str, Any] | None:
        assert op.proc.poll() is None, f"the operator exited ({op.proc.returncode}):\n{op.output()[-4000:]}"
        obj: dict[str, Any] = cluster.get_json("inferenceservice", ISVC, "-n", namespace)
        c = condition(obj, "Ready")
        return obj if c and c["status"] == "True" else None

    try:
        isvc = wait_for("the sample InferenceService to be Ready", ready, timeout=120)
    except AssertionError:
        state = cluster.kubectl(
            "get", "infsvc,deploy,pods", "-n", namespace, "-o", "yaml", check=False
        ).stdout
        raise AssertionError(f"{state[-6000:]}\n--- operator log ---\n{op.output()[-6000:]}") from None

    meta, status = isvc["metadata"], isvc["status"]
    assert status["observedGeneration"] == meta["generation"]
    assert status["url"] == f"http://{ISVC}.{namespace}.svc.cluster.local/v1"
    assert {c["type"] for c in status["conditions"]} == {
        "Ready", "ConfigReady", "Scheduled", "DeploymentAvailable", "AutoscalerReady"}  # fmt: skip
    ready_c, config = condition(isvc, "Ready"), condition(isvc, "ConfigReady")
    assert ready_c and ready_c["reason"] == "Serving" and ready_c["observedGeneration"] == meta["generation"]
    assert config and config["status"] == "True" and config["reason"] == "ConfigApplied"
    assert status["readyReplicas"] == 1
    # The children, owned by the InferenceService and labelled per CONTRACT.md.
    for kind, name in (("configmap", f"{ISVC}-config"), ("deployment", ISVC), ("service", ISVC)):
        child = cluster.get_json(kind, name, "-n", namespace)
        labels = child["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "infera-operator", kind
        assert labels["infera.dev/inferenceservice"] == ISVC, kind
        assert [r["uid"] for r in child["metadata"]["ownerReferences"]] == [meta["uid"]], kind
    assert "runtime.json" in cluster.get_json("configmap", f"{ISVC}-config", "-n", namespace)["data"]
    # Events are posted as the ServiceAccount too (RBAC: events create).
    events = cluster.get_json("events", "-n", namespace, "--field-selector", f"involvedObject.name={ISVC}")
    sources = {(e.get("source") or {}).get("component") for e in events["items"]}
    assert "infera-operator" in sources, events["items"]
    return isvc


RBAC_DENIAL = re.compile(r"cannot [a-z]+ resource|Not enough permissions")


def assert_never_refused(op: Operator) -> None:
    """No RBAC denial in the operator's log (kopf logs and retries them; the reconciler logs them).
    Other 403s, e.g. writing into a namespace being deleted by an earlier test, are not about RBAC."""
    text = op.output()
    denials = [line for line in text.splitlines() if RBAC_DENIAL.search(line)]
    assert not denials, "RBAC refused the operator:\n" + "\n".join(denials[:10])


# --------------------------------------------------------------------------------------- tests
def test_watched_namespaces_mode_runs_with_the_chart_rbac_only(
    cluster: Cluster, helm_bin: Path, namespace: str, tmp_path: Path
) -> None:
    """operator.watchNamespaces=[NS]: a Role in NS only; the operator (--namespace NS) serves a model."""
    other = f"o-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", other)
    try:
        with installed(helm_bin, cluster, f"operator.watchNamespaces={{{namespace}}}") as inst:
            assert inst.kinds().count("Role") == 1 and inst.kinds().count("ClusterRole") == 1  # + discovery
            dep = next(o for o in inst.manifest if o["kind"] == "Deployment")
            args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
            assert "--standalone" in args and f"--namespace={namespace}" in args
            # The chart's operator Deployment itself is available (its pod is simulated by kwok).
            got = cluster.get_json("deployment", dep["metadata"]["name"], "-n", inst.namespace)
            assert got["status"].get("availableReplicas") == 1

            # Least privilege, as the API server's authorizer sees it.
            assert can_i(cluster, inst, "watch", "inferenceservices.infera.dev", "-n", namespace)
            assert can_i(
                cluster,
                inst,
                "patch",
                "inferenceservices.infera.dev",
                "--subresource=status",
                "-n",
                namespace,
            )
            assert can_i(cluster, inst, "create", "deployments.apps", "-n", namespace)
            assert can_i(cluster, inst, "create", "events", "-n", namespace)
            assert can_i(cluster, inst, "watch", "namespaces")  # kopf's namespace observation
            assert can_i(cluster, inst, "watch", "customresourcedefinitions.apiextensions.k8s.io")
            assert not can_i(cluster, inst, "list", "secrets", "--all-namespaces")
            assert not can_i(cluster, inst, "get", "secrets", "-n", namespace)
            assert not can_i(cluster, inst, "get", f"namespaces/{other}")
            assert not can_i(cluster, inst, "create", "deployments.apps", "-n", other)
            assert not can_i(cluster, inst, "list", "pods", "-n", other)
            assert not can_i(cluster, inst, "list", "inferenceservices.infera.dev", "--all-namespaces")
            assert not can_i(cluster, inst, "delete", "inferenceservices.infera.dev", "-n", namespace)
            assert not can_i(cluster, inst, "create", "pods", "-n", namespace)

            kubeconfig = service_account_kubeconfig(cluster, inst, tmp_path / "sa.kubeconfig")
            with operator_as(kubeconfig, tmp_path, "--namespace", namespace, "--standalone") as op:
                cluster.kubectl("apply", "-n", other, "-f", str(SAMPLE))  # not watched: left alone
                reconciled_to_ready(cluster, op, namespace)
                untouched = cluster.get_json("inferenceservice", ISVC, "-n", other)
                assert "status" not in untouched or not untouched["status"].get("conditions")
                assert cluster.kubectl("get", "deployment", ISVC, "-n", other, check=False).returncode != 0

                # A spec change is reconciled too (update path): generation 2 observed, replicas 2.
                cluster.kubectl("patch", "inferenceservice", ISVC, "-n", namespace, "--type=merge",
                                "-p", '{"spec": {"replicas": 2}}')  # fmt: skip

                def scaled() -> bool:
                    obj = cluster.get_json("inferenceservice", ISVC, "-n", namespace)
                    d = cluster.get_json("deployment", ISVC, "-n", namespace)
                    return bool(obj["status"].get("observedGeneration") == 2 and d["spec"]["replicas"] == 2)

                wait_for("the operator to apply spec.replicas=2", scaled, timeout=60)
                assert_never_refused(op)
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_cluster_wide_mode_runs_with_the_chart_rbac_only(
    cluster: Cluster, helm_bin: Path, namespace: str, tmp_path: Path
) -> None:
    """The default: a ClusterRole; the operator (--all-namespaces) serves a model in any namespace."""
    with installed(helm_bin, cluster) as inst:
        assert {"ClusterRole", "ClusterRoleBinding"} <= set(inst.kinds())
        assert "Role" not in inst.kinds()
        assert can_i(cluster, inst, "watch", "inferenceservices.infera.dev", "--all-namespaces")
        assert can_i(cluster, inst, "list", "pods", "--all-namespaces")
        assert can_i(cluster, inst, "delete", "horizontalpodautoscalers.autoscaling", "-n", namespace)
        assert not can_i(cluster, inst, "list", "secrets", "--all-namespaces")
        assert not can_i(cluster, inst, "get", "secrets", "-n", namespace)
        assert not can_i(cluster, inst, "create", "clusterrolebindings.rbac.authorization.k8s.io")
        assert not can_i(cluster, inst, "create", "pods", "-n", namespace)
        assert not can_i(cluster, inst, "update", "customresourcedefinitions.apiextensions.k8s.io")

        kubeconfig = service_account_kubeconfig(cluster, inst, tmp_path / "sa.kubeconfig")
        # The negative check is live: with the SA's own token, listing Secrets gets 403 Forbidden.
        denied = subprocess.run(["kubectl", f"--kubeconfig={kubeconfig}", "get", "secrets", "-A"],
                                capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        assert denied.returncode != 0 and "Forbidden" in denied.stderr, denied.stderr
        with operator_as(kubeconfig, tmp_path, "--all-namespaces", "--standalone") as op:
            reconciled_to_ready(cluster, op, namespace)
            assert_never_refused(op)
