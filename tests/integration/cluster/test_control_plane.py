"""The test control plane is real: kubectl works, the scheduler places GPU pods, kwok runs them."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from infera_testenv.cluster import Cluster

pytestmark = pytest.mark.integration


def gpu_deployment(name: str, gpus: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": "example.invalid/runtime:1",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        }
                    ]
                },
            },
        },
    }


def test_kubectl_sees_server_and_gpu_nodes(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.")
    nodes = cluster.get_json("nodes")["items"]
    assert len(nodes) == cluster.config.nodes
    for node in nodes:
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == str(cluster.config.gpus_per_node)
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert ready["Ready"] == "True"
        assert node["spec"]["podCIDR"].startswith("127.")


def test_gpu_deployment_becomes_available(cluster: Cluster, namespace: str) -> None:
    cluster.apply(gpu_deployment("one-gpu", 1), "-n", namespace)
    cluster.kubectl(
        "wait", "-n", namespace, "--for=condition=Available", "--timeout=90s", "deployment/one-gpu"
    )
    pods = cluster.get_json("pods", "-n", namespace, "-l", "app=one-gpu")["items"]
    assert len(pods) == 1
    pod = pods[0]
    assert pod["spec"]["nodeName"].startswith("kwok-gpu-")
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["podIP"].startswith("127.")  # from the node's loopback podCIDR
    conds = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conds["Ready"] == "True"
    # The ReplicaSet chain is real: owned by the Deployment.
    rs = cluster.get_json("replicasets", "-n", namespace, "-l", "app=one-gpu")["items"]
    assert rs[0]["metadata"]["ownerReferences"][0]["kind"] == "Deployment"


def test_too_many_gpus_stays_pending_with_scheduler_reason(cluster: Cluster, namespace: str) -> None:
    cluster.apply(gpu_deployment("hundred-gpus", 100), "-n", namespace)
    deadline = time.monotonic() + 60
    message = ""
    while time.monotonic() < deadline:
        pods = cluster.get_json("pods", "-n", namespace, "-l", "app=hundred-gpus")["items"]
        for pod in pods:
            assert pod["status"]["phase"] == "Pending"
            for cond in pod["status"].get("conditions", []):
                if cond["type"] == "PodScheduled" and cond["status"] == "False":
                    assert cond["reason"] == "Unschedulable"
                    message = cond.get("message", "")
        if message:
            break
        time.sleep(0.5)
    assert "Insufficient nvidia.com/gpu" in message, message
    time.sleep(2)  # still pending a moment later
    pod = cluster.get_json("pods", "-n", namespace, "-l", "app=hundred-gpus")["items"][0]
    assert pod["status"]["phase"] == "Pending"
    assert "nodeName" not in pod["spec"]
