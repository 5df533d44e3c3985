"""The operator against the real control plane (kube-apiserver, etcd, controller manager with the
garbage collector, scheduler, kwok GPU nodes). One operator process serves the whole module."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client, config
from opharness import OperatorProcess, isvc, wait_for

from infera_operator.kube import RestKube
from infera_operator.reconcile import reconcile
from infera_operator.render import OperatorConfig
from infera_testenv.cluster import Cluster

pytestmark = pytest.mark.integration
RUNTIME_IMAGE = "registry.example/infera-runtime:test"  # INFERA_RUNTIME_IMAGE of the operator fixture


def get(cluster: Cluster, ns: str, *what: str) -> Any:
    proc = cluster.kubectl("get", *what, "-n", ns, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def condition(obj: dict[str, Any] | None, type_: str = "Ready") -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


def create(cluster: Cluster, ns: str, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "--server-side", "-n", ns, "-f", "-", input=json.dumps(manifest))


def wait_ready(
    cluster: Cluster, ns: str, name: str, op: OperatorProcess, timeout: int = 90
) -> dict[str, Any]:
    proc = cluster.kubectl(
        "wait", "-n", ns, "--for=condition=Ready", f"--timeout={timeout}s", f"inferenceservice/{name}",
        check=False, timeout=timeout + 10,
    )  # fmt: skip
    if proc.returncode != 0:
        obj = get(cluster, ns, "infsvc", name)
        raise AssertionError(
            f"{ns}/{name} not Ready: {proc.stderr}\nstatus: {json.dumps((obj or {}).get('status'), indent=1)}\n"
            f"operator log:\n{op.log()[-3000:]}"
        )
    out: dict[str, Any] = get(cluster, ns, "infsvc", name)
    return out


def rest_kube(cluster: Cluster) -> RestKube:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=cfg)  # type: ignore[no-untyped-call]
    return RestKube(client.ApiClient(cfg))


def resource_versions(cluster: Cluster, ns: str, name: str) -> dict[str, str]:
    out = {}
    for what in ("infsvc", "deployment", "service", "hpa"):
        obj = get(cluster, ns, what, name)
        if obj:
            out[what] = obj["metadata"]["resourceVersion"]
    cm = get(cluster, ns, "configmap", f"{name}-config")
    out["configmap"] = cm["metadata"]["resourceVersion"]
    return out


def test_create_ready_children_and_no_operator_marks(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    create(cluster, namespace, isvc("chat", {"replicas": 2}))
    obj = wait_ready(cluster, namespace, "chat", operator)
    st = obj["status"]
    assert st["url"] == f"http://chat.{namespace}.svc.cluster.local/v1"
    assert st["readyReplicas"] == 2 and st["replicas"] == 2
    assert st["observedGeneration"] == obj["metadata"]["generation"]
    assert {c["type"] for c in st["conditions"]} == {
        "Ready", "ConfigReady", "Scheduled", "DeploymentAvailable", "AutoscalerReady",
    }  # fmt: skip
    assert all(c["lastTransitionTime"] and c["observedGeneration"] == 1 for c in st["conditions"])
    # no finalizer, no kopf bookkeeping on the object
    assert not obj["metadata"].get("finalizers")
    assert not [k for k in obj["metadata"].get("annotations") or {} if "kopf" in k]
    assert "kopf" not in st

    dep = get(cluster, namespace, "deployment", "chat")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == RUNTIME_IMAGE
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    owner = dep["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "InferenceService",
        obj["metadata"]["uid"],
        True,
    )
    svc = get(cluster, namespace, "service", "chat")
    assert svc["spec"]["ports"][0]["port"] == 80
    cm = get(cluster, namespace, "configmap", "chat-config")
    assert json.loads(cm["data"]["runtime.json"])["model"] == "/models/tiny"
    assert get(cluster, namespace, "hpa", "chat") is None
    pods = get(cluster, namespace, "pods")["items"]
    assert len(pods) == 2 and all(
        p["metadata"]["labels"]["infera.dev/inferenceservice"] == "chat" for p in pods
    )

    # managed by server-side apply under the operator's field manager
    managed = cluster.kubectl(
        "get", "deployment", "chat", "-n", namespace, "-o", "json", "--show-managed-fields"
    ).stdout
    managers = {(m["manager"], m["operation"]) for m in json.loads(managed)["metadata"]["managedFields"]}
    assert ("infera-operator", "Apply") in managers

    events = get(cluster, namespace, "events")["items"]
    reasons = {e["reason"] for e in events if e["involvedObject"]["kind"] == "InferenceService"}
    assert "Ready" in reasons

    # the printer columns read the status
    table = cluster.kubectl("get", "infsvc", "chat", "-n", namespace).stdout
    assert "True" in table and f"http://chat.{namespace}.svc.cluster.local/v1" in table


def test_no_op_reconcile_writes_nothing_and_server_side_diff_is_empty(
    cluster: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Any
) -> None:
    manifest = isvc("quiet")
    manifest["metadata"]["namespace"] = namespace
    path = tmp_path / "cr.json"
    path.write_text(json.dumps(manifest))
    cluster.kubectl("apply", "--server-side", "-f", str(path))
    wait_ready(cluster, namespace, "quiet", operator)

    # The status settles (no more transitions), then: a direct reconcile sends no write ...
    kube = rest_kube(cluster)
    cfg = OperatorConfig(runtime_image=RUNTIME_IMAGE)  # as the operator process has it

    def settled() -> bool:
        return reconcile(kube, namespace, "quiet", cfg).wrote is False

    wait_for("a settled status", settled, timeout=30, interval=1)
    before = kube.writes.total
    result = reconcile(kube, namespace, "quiet", cfg)
    assert kube.writes.total == before and not result.wrote and result.ready

    # ... and the operator's own periodic resyncs (every 2 s here) change no object either.
    versions = resource_versions(cluster, namespace, "quiet")
    start = operator.health()["reconciles"]
    known = operator.health()["inferenceServices"]
    wait_for(
        "two rounds of resyncs", lambda: operator.health()["reconciles"] >= start + 2 * known, timeout=30
    )
    assert resource_versions(cluster, namespace, "quiet") == versions

    diff = cluster.kubectl("diff", "--server-side", "-f", str(path), check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert diff.stdout == ""


def test_update_rolls_out_and_scale_subresource(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    create(cluster, namespace, isvc("roll"))
    wait_ready(cluster, namespace, "roll", operator)
    dep0 = get(cluster, namespace, "deployment", "roll")
    hash0 = dep0["spec"]["template"]["metadata"]["annotations"]["infera.dev/config-hash"]
    rs0 = {p["metadata"]["labels"]["pod-template-hash"] for p in get(cluster, namespace, "pods")["items"]}

    cluster.kubectl(
        "patch",
        "infsvc",
        "roll",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"engine":{"maxModelLen":2048}}}',
    )
    obj = wait_for(
        "the new generation to be Ready",
        lambda: (
            (o := get(cluster, namespace, "infsvc", "roll"))
            and condition(o)["status"] == "True"
            and condition(o)["observedGeneration"] == o["metadata"]["generation"] == 2
            and o
        ),
        timeout=90,
    )
    assert obj["status"]["observedGeneration"] == 2
    dep1 = get(cluster, namespace, "deployment", "roll")
    assert dep1["spec"]["template"]["metadata"]["annotations"]["infera.dev/config-hash"] != hash0
    cm = get(cluster, namespace, "configmap", "roll-config")
    assert json.loads(cm["data"]["runtime.json"])["max_model_len"] == 2048
    wait_for(
        "pods of the new template only",
        lambda: (hs := {p["metadata"]["labels"]["pod-template-hash"] for p in get(cluster, namespace, "pods")["items"]
                        if not p["metadata"].get("deletionTimestamp")})
        and not hs & rs0,
    )  # fmt: skip

    cluster.kubectl("scale", "infsvc/roll", "-n", namespace, "--replicas=3")
    assert get(cluster, namespace, "infsvc", "roll")["spec"]["replicas"] == 3
    wait_for("3 replicas", lambda: get(cluster, namespace, "deployment", "roll")["spec"]["replicas"] == 3)
    wait_for(
        "3 ready replicas in the status",
        lambda: get(cluster, namespace, "infsvc", "roll")["status"].get("readyReplicas") == 3,
        timeout=90,
    )
    scale = json.loads(
        cluster.kubectl(
            "get", "--raw", f"/apis/infera.dev/v1alpha1/namespaces/{namespace}/inferenceservices/roll/scale"
        ).stdout
    )
    assert scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 3
    assert "infera.dev/inferenceservice=roll" in scale["status"]["selector"]


def test_deleted_child_is_recreated_and_edited_child_repaired(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    create(cluster, namespace, isvc("heal"))
    wait_ready(cluster, namespace, "heal", operator)
    old_uid = get(cluster, namespace, "service", "heal")["metadata"]["uid"]
    cluster.kubectl("delete", "service", "heal", "-n", namespace)
    cluster.kubectl("delete", "configmap", "heal-config", "-n", namespace)
    wait_for(
        "the Service to come back",
        lambda: (s := get(cluster, namespace, "service", "heal")) and s["metadata"]["uid"] != old_uid,
    )
    wait_for("the ConfigMap to come back", lambda: get(cluster, namespace, "configmap", "heal-config"))

    cluster.kubectl(
        "patch", "deployment", "heal", "-n", namespace, "--type=strategic", "-p",
        '{"spec":{"template":{"spec":{"containers":[{"name":"runtime","image":"evil/image:1"}]}}}}',
    )  # fmt: skip
    wait_for(
        "the image to be repaired",
        lambda: (
            get(cluster, namespace, "deployment", "heal")["spec"]["template"]["spec"]["containers"][0][
                "image"
            ]
            == RUNTIME_IMAGE
        ),
    )
    cluster.kubectl(
        "patch",
        "configmap",
        "heal-config",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"data":{"runtime.json":"{}"}}',
    )
    wait_for(
        "the runtime configuration to be repaired",
        lambda: get(cluster, namespace, "configmap", "heal-config")["data"]["runtime.json"] != "{}",
    )
    wait_ready(cluster, namespace, "heal", operator)


def test_insufficient_gpus_is_reported_with_the_schedulers_message(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    create(cluster, namespace, isvc("huge", {"resources": {"gpus": 64}, "engine": {"tensorParallelSize": 8}}))
    obj = wait_for(
        "Ready=False InsufficientGPU",
        lambda: (
            (o := get(cluster, namespace, "infsvc", "huge"))
            and condition(o).get("reason") == "InsufficientGPU"
            and o
        ),
    )
    ready = condition(obj)
    assert ready["status"] == "False"
    assert "Insufficient nvidia.com/gpu" in ready["message"]
    assert condition(obj, "Scheduled")["reason"] == "InsufficientGPU"
    events = get(cluster, namespace, "events")["items"]
    assert any(e["reason"] == "InsufficientGPU" and e["type"] == "Warning" for e in events)
    # fixing the request makes it schedulable and Ready
    cluster.kubectl(
        "patch", "infsvc", "huge", "-n", namespace, "--type=merge", "-p",
        '{"spec":{"resources":{"gpus":8}}}',
    )  # fmt: skip
    wait_ready(cluster, namespace, "huge", operator)


def test_invalid_spec_beyond_cel_is_reported(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    create(cluster, namespace, isvc("bad", {"engine": {"extraArgs": {"max_model_len": 10}}}))
    obj = wait_for(
        "Ready=False InvalidSpec",
        lambda: (
            (o := get(cluster, namespace, "infsvc", "bad"))
            and condition(o).get("reason") == "InvalidSpec"
            and o
        ),
    )
    assert "max_model_len" in condition(obj)["message"]
    assert get(cluster, namespace, "deployment", "bad") is None


def test_autoscaling_toggles_the_hpa(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    create(cluster, namespace, isvc("auto", {"replicas": 2}))
    wait_ready(cluster, namespace, "auto", operator)
    cluster.kubectl(
        "patch", "infsvc", "auto", "-n", namespace, "--type=merge", "-p",
        '{"spec":{"autoscaling":{"minReplicas":1,"maxReplicas":4,"targetInFlightRequests":8}}}',
    )  # fmt: skip
    hpa = wait_for("the HPA", lambda: get(cluster, namespace, "hpa", "auto"))
    assert hpa["spec"]["maxReplicas"] == 4
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "infera_requests_in_flight"
    assert hpa["metadata"]["ownerReferences"][0]["kind"] == "InferenceService"
    dep = get(cluster, namespace, "deployment", "auto")
    assert dep["spec"]["replicas"] == 2, "switching autoscaling on must not reset the replicas"
    managed = json.loads(
        cluster.kubectl(
            "get", "deployment", "auto", "-n", namespace, "-o", "json", "--show-managed-fields"
        ).stdout
    )["metadata"]["managedFields"]
    ours = next(m for m in managed if m["manager"] == "infera-operator")
    assert "f:replicas" not in ours["fieldsV1"]["f:spec"]
    wait_for(
        "AutoscalerReady to be reported",
        lambda: (
            condition(get(cluster, namespace, "infsvc", "auto"), "AutoscalerReady").get("reason")
            not in (None, "AutoscalingDisabled", "HPANotFound")
        ),
    )

    cluster.kubectl(
        "patch",
        "infsvc",
        "auto",
        "-n",
        namespace,
        "--type=json",
        "-p",
        '[{"op":"remove","path":"/spec/autoscaling"}]',
    )
    wait_for("the HPA to go", lambda: get(cluster, namespace, "hpa", "auto") is None)
    wait_for(
        "AutoscalingDisabled",
        lambda: (
            condition(get(cluster, namespace, "infsvc", "auto"), "AutoscalerReady").get("reason")
            == "AutoscalingDisabled"
        ),
    )
    assert get(cluster, namespace, "deployment", "auto")["spec"]["replicas"] == 2


def test_deleting_the_inference_service_removes_the_children(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    create(cluster, namespace, isvc("bye", {"autoscaling": {"maxReplicas": 2, "targetQueuedRequests": 4}}))
    wait_for("the HPA", lambda: get(cluster, namespace, "hpa", "bye"))
    assert not get(cluster, namespace, "infsvc", "bye")["metadata"].get("finalizers")
    # no finalizer: the delete completes at once, then the garbage collector removes the children
    cluster.kubectl("delete", "infsvc", "bye", "-n", namespace, "--wait=true", "--timeout=10s")
    for what, name in [
        ("deployment", "bye"),
        ("service", "bye"),
        ("configmap", "bye-config"),
        ("hpa", "bye"),
    ]:
        wait_for(
            f"{what} {name} to be garbage-collected",
            lambda w=what, n=name: get(cluster, namespace, w, n) is None,
        )


class _Metrics(BaseHTTPRequestHandler):
    """A runtime pod's /metrics (the contract's metric names), counting up on every scrape."""

    scrapes = 0

    def do_GET(self) -> None:
        type(self).scrapes += 1
        n = type(self).scrapes
        body = (
            "# TYPE infera_generation_tokens_total counter\n"
            f"infera_generation_tokens_total {n * 100}\n"
            "# TYPE infera_requests_total counter\n"
            f'infera_requests_total{{endpoint="/v1/completions",status="200"}} {n * 2}\n'
            "# TYPE infera_requests_in_flight gauge\ninfera_requests_in_flight 3\n"
            "# TYPE infera_kv_cache_usage_ratio gauge\ninfera_kv_cache_usage_ratio 0.25\n"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def serve_metrics() -> Iterator[list[ThreadingHTTPServer]]:
    servers: list[ThreadingHTTPServer] = []
    yield servers
    for s in servers:
        s.shutdown()
        s.server_close()


def test_throughput_from_ready_pods(
    cluster: Cluster, namespace: str, operator: OperatorProcess, serve_metrics: list[ThreadingHTTPServer]
) -> None:
    create(cluster, namespace, isvc("busy"))
    wait_ready(cluster, namespace, "busy", operator)
    pod = get(cluster, namespace, "pods")["items"][0]
    server = ThreadingHTTPServer((pod["status"]["podIP"], 8000), _Metrics)
    serve_metrics.append(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    obj = wait_for(
        "status.throughput",
        lambda: (
            (o := get(cluster, namespace, "infsvc", "busy"))
            and (o["status"].get("throughput") or {}).get("generationTokensPerSecond", 0) > 0
            and o
        ),
        timeout=60,
    )
    t = obj["status"]["throughput"]
    assert t["pods"] == 1 and t["inFlightRequests"] == 3 and t["kvCacheUsage"] == 0.25
    assert t["requestsPerSecond"] > 0 and t["measuredAt"].endswith("Z")
    table = cluster.kubectl("get", "infsvc", "busy", "-n", namespace).stdout.splitlines()
    column = table[0].split().index("TOKENS/S")
    assert float(table[1].split()[column]) > 0

    cluster.kubectl("scale", "infsvc/busy", "-n", namespace, "--replicas=0")
    obj = wait_for(
        "throughput to read zero without ready pods",
        lambda: (
            (o := get(cluster, namespace, "infsvc", "busy")) and o["status"]["throughput"]["pods"] == 0 and o
        ),
        timeout=60,
    )
    assert obj["status"]["throughput"]["generationTokensPerSecond"] == 0
    assert condition(obj)["reason"] == "ScaledToZero"


def test_liveness_endpoint(operator: OperatorProcess) -> None:
    assert operator.alive()
    assert "inferenceServices" in operator.health()
