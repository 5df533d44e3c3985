"""Faults on the real control plane with the operator as a real subprocess.

kwok plays the kubelet (pods become Running and Ready), the controller manager runs Deployments,
ReplicaSets and garbage collection. Each test breaks something while the operator is reconciling
and then requires convergence: every InferenceService Ready at its current generation, exactly one
ConfigMap, Deployment and Service per InferenceService, each owned by it, the Deployment at the
spec's replicas with that many pods, and nothing else labelled as ours (no orphans, no duplicates).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from reliability_support import install_crd

from infera_testenv.cluster import Cluster

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
ISVC_LABEL = "infera.dev/inferenceservice"
MANAGED = "app.kubernetes.io/managed-by=infera-operator"
CONVERGE_S = 120.0


class OperatorProcess:
    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.logpath = cluster.logs / f"operator-{namespace}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = self.logpath.open("ab")
        env = {
            **self.cluster.env(),
            "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
            "INFERA_LOG_FORMAT": "text",
            # a short safety-net resync bounds convergence after missed events
            "INFERA_RESYNC_INTERVAL_SECONDS": "10",
            "INFERA_METRICS_INTERVAL_SECONDS": "5",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "infera_operator", "--namespace", self.namespace, "--standalone"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.logpath.read_text(errors="replace")[-chars:]
        return ""


@pytest.fixture(scope="module")
def env(cluster: Cluster) -> Iterator[tuple[Cluster, str, OperatorProcess]]:
    install_crd(cluster.kubectl)
    ns = f"faults-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    op = OperatorProcess(cluster, ns)
    op.start()
    try:
        yield cluster, ns, op
    finally:
        op.stop()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def isvc(name: str, replicas: int = 1, max_model_len: int = 512) -> dict[str, Any]:
    return {
        "apiVersion": "infera.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "/models/tiny", "servedName": name},
            "engine": {"type": "synthetic", "maxModelLen": max_model_len},
            "resources": {"gpus": 0},
            "replicas": replicas,
        },
    }


def apply_all(cluster: Cluster, ns: str, objs: list[dict[str, Any]]) -> None:
    cluster.kubectl(
        "apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
    )


def problems(cluster: Cluster, ns: str) -> list[str]:
    """Everything that differs from the converged state (empty when converged)."""
    out: list[str] = []
    isvcs = {o["metadata"]["name"]: o for o in cluster.get_json("inferenceservices", "-n", ns)["items"]}
    children = cluster.get_json(
        "configmaps,deployments,services,horizontalpodautoscalers", "-n", ns, "-l", MANAGED
    )["items"]
    pods = cluster.get_json("pods", "-n", ns, "-l", MANAGED)["items"]
    rsets = cluster.get_json("replicasets", "-n", ns, "-l", MANAGED)["items"]
    expected: dict[tuple[str, str], str] = {}
    for name, obj in isvcs.items():
        uid = obj["metadata"]["uid"]
        spec_replicas = obj["spec"].get("replicas", 1)
        status = obj.get("status", {})
        conds = {c["type"]: c for c in status.get("conditions", [])}
        if conds.get("Ready", {}).get("status") != "True":
            out.append(
                f"{name}: Ready={conds.get('Ready', {}).get('status')} ({conds.get('Ready', {}).get('reason')})"
            )
        if status.get("observedGeneration") != obj["metadata"]["generation"]:
            out.append(
                f"{name}: observedGeneration {status.get('observedGeneration')} != {obj['metadata']['generation']}"
            )
        if status.get("readyReplicas") != spec_replicas:
            out.append(f"{name}: readyReplicas {status.get('readyReplicas')} != {spec_replicas}")
        expected[("ConfigMap", f"{name}-config")] = uid
        expected[("Deployment", name)] = uid
        expected[("Service", name)] = uid
        running = [
            p
            for p in pods
            if p["metadata"]["labels"].get(ISVC_LABEL) == name
            and p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
        ]
        if len(running) != spec_replicas:
            out.append(f"{name}: {len(running)} running pods, want {spec_replicas}")
        owned_rs = [r for r in rsets if r["metadata"]["labels"].get(ISVC_LABEL) == name]
        if sum(r["spec"].get("replicas", 0) for r in owned_rs) != spec_replicas:
            out.append(f"{name}: ReplicaSets want {sum(r['spec'].get('replicas', 0) for r in owned_rs)} pods")
    seen: dict[tuple[str, str], int] = {}
    for c in children:
        key = (c["kind"], c["metadata"]["name"])
        seen[key] = seen.get(key, 0) + 1
        if key not in expected:
            out.append(f"orphan or unexpected {key[0]}/{key[1]}")
            continue
        owners = [o for o in c["metadata"].get("ownerReferences", []) if o.get("controller")]
        if [o["uid"] for o in owners] != [expected[key]]:
            out.append(f"{key[0]}/{key[1]}: controller owner {owners} is not its InferenceService")
        if key[0] == "Deployment":
            want = isvcs[key[1]]["spec"].get("replicas", 1)
            if c["spec"].get("replicas") != want:
                out.append(f"Deployment/{key[1]}: replicas {c['spec'].get('replicas')} != {want}")
    for key in expected:
        if key not in seen:
            out.append(f"missing {key[0]}/{key[1]}")
    return out


def converge(cluster: Cluster, ns: str, op: OperatorProcess, timeout: float = CONVERGE_S) -> None:
    deadline = time.monotonic() + timeout
    last: list[str] = []
    while time.monotonic() < deadline:
        try:
            last = problems(cluster, ns)
        except Exception as exc:  # the API server may be restarting
            last = [f"{type(exc).__name__}: {exc}"]
        if not last:
            return
        time.sleep(1)
    raise AssertionError(
        f"not converged after {timeout:.0f}s:\n  " + "\n  ".join(last) + f"\noperator log:\n{op.log_tail()}"
    )


def crash_apiserver(cluster: Cluster, down_s: float = 3.0) -> None:
    """SIGKILL kube-apiserver (a crash: no graceful drain of watches), keep it down a moment,
    start it again on the same port."""
    cluster.restart_apiserver(crash=True, down_s=down_s)


def patch(cluster: Cluster, ns: str, name: str, spec: dict[str, Any]) -> None:
    cluster.kubectl(
        "patch", "-n", ns, f"inferenceservice/{name}", "--type=merge", "-p", json.dumps({"spec": spec})
    )


def wait_for(what: str, fn: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_operator_mid_reconcile(env: tuple[Cluster, str, OperatorProcess]) -> None:
    cluster, ns, op = env
    names = [f"kill-{i}" for i in range(6)]
    apply_all(cluster, ns, [isvc(n) for n in names])
    # SIGKILL (no graceful shutdown) as soon as the operator has started creating children
    wait_for(
        "the first child",
        lambda: bool(cluster.get_json("configmaps,deployments", "-n", ns, "-l", MANAGED)["items"]),
        timeout=30,
    )
    op.stop(signal.SIGKILL)
    # while it is down: a spec change and a new object
    patch(cluster, ns, names[0], {"replicas": 2})
    apply_all(cluster, ns, [isvc("kill-late")])
    op.start()
    converge(cluster, ns, op)
    assert op.alive()


def test_apiserver_restart_during_reconcile(env: tuple[Cluster, str, OperatorProcess]) -> None:
    cluster, ns, op = env
    apply_all(cluster, ns, [isvc(f"api-{i}") for i in range(3)])
    converge(cluster, ns, op)
    # changes that need writes (scale, config change -> ConfigMap and pod template roll) ...
    for i in range(3):
        patch(cluster, ns, f"api-{i}", {"replicas": 2, "engine": {"maxModelLen": 256}})
    # ... and kube-apiserver goes away in the middle of them
    crash_apiserver(cluster)
    patch(cluster, ns, "api-0", {"replicas": 3})
    converge(cluster, ns, op)
    assert op.alive(), "the operator died when the API server restarted:\n" + op.log_tail()
    cm = cluster.get_json("configmap", "api-1-config", "-n", ns)
    assert json.loads(next(iter(cm["data"].values())))["max_model_len"] == 256


def test_deleted_pods_and_children_come_back(env: tuple[Cluster, str, OperatorProcess]) -> None:
    cluster, ns, op = env
    apply_all(cluster, ns, [isvc("victim", replicas=2), isvc("bystander")])
    converge(cluster, ns, op)
    old_uids = {
        c["metadata"]["name"] + "/" + c["kind"]: c["metadata"]["uid"]
        for c in cluster.get_json("configmaps,deployments,services", "-n", ns, "-l", f"{ISVC_LABEL}=victim")[
            "items"
        ]
    }
    bystander_before = cluster.get_json("deployment", "bystander", "-n", ns)["metadata"]["uid"]
    cluster.kubectl("delete", "pods", "-n", ns, "-l", f"{ISVC_LABEL}=victim", "--wait=false")
    for kind, name in (("deployment", "victim"), ("service", "victim"), ("configmap", "victim-config")):
        cluster.kubectl("delete", kind, name, "-n", ns, "--wait=false")
    # and drift on a surviving child: someone scales the bystander's Deployment by hand
    cluster.kubectl("scale", "deployment/bystander", "-n", ns, "--replicas=4")
    converge(cluster, ns, op)
    new_uids = {
        c["metadata"]["name"] + "/" + c["kind"]: c["metadata"]["uid"]
        for c in cluster.get_json("configmaps,deployments,services", "-n", ns, "-l", f"{ISVC_LABEL}=victim")[
            "items"
        ]
    }
    assert set(new_uids) == set(old_uids)
    assert not set(new_uids.values()) & set(old_uids.values()), "children were not recreated"
    assert cluster.get_json("deployment", "bystander", "-n", ns)["metadata"]["uid"] == bystander_before


def test_deleted_inference_services_leave_nothing(env: tuple[Cluster, str, OperatorProcess]) -> None:
    cluster, ns, op = env
    cluster.kubectl("delete", "inferenceservices", "--all", "-n", ns, "--wait=false")

    def gone() -> bool:
        left = cluster.get_json("configmaps,deployments,services,replicasets,pods", "-n", ns, "-l", MANAGED)
        return not left["items"]

    wait_for("children garbage-collected", gone, timeout=CONVERGE_S)
    assert op.alive()
