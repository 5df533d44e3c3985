"""Hostile InferenceServices: the real kube-apiserver rejects each with a clear message.

The CRD's OpenAPI schema and CEL rules do the checking, so no invalid object ever reaches the
operator. Each case states a fragment that must appear in the API server's message, so a
rejection for the wrong reason fails the test.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from reliability_support import install_crd

from infera_testenv.cluster import Cluster

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "infera.dev", "v1alpha1", "inferenceservices"

VALID: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "InferenceService",
    "metadata": {"name": "ok"},
    "spec": {"model": {"uri": "/models/tiny"}, "resources": {"gpus": 1}, "replicas": 1},
}


def variant(name: str = "bad", **spec: Any) -> dict[str, Any]:
    obj = copy.deepcopy(VALID)
    obj["metadata"]["name"] = name
    for path, value in spec.items():
        node = obj["spec"]
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if value is _DELETE:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return obj


_DELETE = object()


def without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


# (id, object, fragment of the API server's message)
CASES: list[tuple[str, Any, str]] = [
    ("no-spec", {**without(VALID, "spec")}, "spec: Required value"),
    ("spec-is-a-string", {**VALID, "spec": "serve llama please"}, "spec: Invalid value"),
    ("missing-model", variant(model=_DELETE), "spec.model: Required value"),
    ("missing-model-uri", variant(model={"servedName": "x"}), "spec.model.uri: Required value"),
    ("model-uri-wrong-type", variant(model__uri=42), "spec.model.uri: Invalid value"),
    ("model-uri-bad-scheme", variant(model__uri="s3://bucket/llama"), "model.uri must be hf://ORG/NAME"),
    ("model-uri-relative-path", variant(model__uri="../../etc/shadow"), "model.uri must be hf://ORG/NAME"),
    ("model-uri-too-long", variant(model__uri="/" + "a" * 5000), "spec.model.uri: Too long"),
    ("revision-without-hf", variant(model__revision="main"), "model.revision only applies to hf:// models"),
    ("replicas-negative", variant(replicas=-1), "spec.replicas: Invalid value: -1"),
    ("replicas-huge", variant(replicas=10**9), "spec.replicas: Invalid value: 1000000000"),
    ("replicas-beyond-int64", variant(replicas=10**30), "replicas"),
    ("replicas-string", variant(replicas="two"), 'spec.replicas: Invalid value: "string"'),
    ("replicas-float", variant(replicas=1.5), "spec.replicas: Invalid value"),
    ("gpus-negative", variant(resources__gpus=-2), "spec.resources.gpus: Invalid value: -2"),
    ("gpus-huge", variant(resources__gpus=4096), "spec.resources.gpus: Invalid value: 4096"),
    (
        "memory-bad-quantity",
        variant(resources__memory="lots"),
        "resources.memory must be a Kubernetes quantity",
    ),
    ("cpu-bad-quantity", variant(resources__cpu="1.2.3"), "resources.cpu must be a Kubernetes quantity"),
    ("shm-negative-int", variant(resources__sharedMemory=-1), "resources.sharedMemory must be a Kubernetes"),
    ("gpu-type-without-gpus", variant(resources={"gpus": 0, "gpuType": "NVIDIA-H100"}), "gpuType needs"),
    (
        "engine-type-unknown",
        variant(engine__type="tensorrt"),
        'spec.engine.type: Unsupported value: "tensorrt"',
    ),
    ("dtype-unknown", variant(engine__dtype="int3"), 'spec.engine.dtype: Unsupported value: "int3"'),
    ("gpu-mem-util-above-one", variant(engine__gpuMemoryUtilization=2.5), "spec.engine.gpuMemoryUtilization"),
    ("max-model-len-zero", variant(engine__maxModelLen=0), "spec.engine.maxModelLen: Invalid value: 0"),
    (
        "tp-does-not-divide-gpus",
        variant(engine__tensorParallelSize=3, resources__gpus=4),
        "engine.tensorParallelSize must divide resources.gpus",
    ),
    ("quantization-shell", variant(engine__quantization="awq; rm -rf /"), "engine.quantization must be"),
    (
        "auto-tool-choice-without-parser",
        variant(engine__enableAutoToolChoice=True),
        "engine.enableAutoToolChoice needs engine.toolCallParser",
    ),
    (
        "tool-parser-shell",
        variant(engine__toolCallParser="hermes && curl x"),
        "engine.toolCallParser must be",
    ),
    (
        "reasoning-parser-upper",
        variant(engine__reasoningParser="DeepSeek R1"),
        "engine.reasoningParser must be",
    ),
    ("structured-backend-unknown", variant(engine__structuredOutputsBackend="regexp"), "Unsupported value"),
    ("max-num-seqs-zero", variant(engine__maxNumSeqs=0), "should be greater than or equal to 1"),
    ("name-starts-with-digit", variant(name="1llama"), "metadata.name must be a DNS-1035 label"),
    ("name-uppercase", variant(name="Llama"), "metadata.name"),
    ("name-too-long", variant(name="a" * 64), "metadata.name"),
    (
        "autoscaling-min-above-max",
        variant(autoscaling={"minReplicas": 5, "maxReplicas": 2, "targetInFlightRequests": 8}),
        "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas",
    ),
    (
        "autoscaling-no-target",
        variant(autoscaling={"maxReplicas": 3}),
        "autoscaling needs at least one target",
    ),
    (
        "autoscaling-missing-max",
        variant(autoscaling={"targetInFlightRequests": 8}),
        "spec.autoscaling.maxReplicas: Required value",
    ),
    (
        "reserved-label",
        variant(labels={"app.kubernetes.io/managed-by": "me"}),
        "labels must not use the prefixes",
    ),
    (
        "env-config-file",
        variant(env=[{"name": "INFERA_CONFIG_FILE", "value": "/tmp/x"}]),
        "must not set INFERA_CONFIG_FILE",
    ),
    (
        "env-value-and-from",
        variant(env=[{"name": "A", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
        "may have value or valueFrom, not both",
    ),
    ("env-bad-name", variant(env=[{"name": "1=2", "value": "x"}]), "env names must consist of"),
    (
        "api-key-secret-bad-name",
        variant(apiKeySecretRef={"name": "Bad_Name"}),
        "apiKeySecretRef.name must be a valid",
    ),
    (
        "startup-timeout-too-small",
        variant(probes__startupTimeoutSeconds=1),
        "spec.probes.startupTimeoutSeconds",
    ),
    ("pull-policy-unknown", variant(runtime__imagePullPolicy="Sometimes"), 'Unsupported value: "Sometimes"'),
    (
        "image-with-space",
        variant(runtime__image="evil image"),
        "runtime.image must be a non-empty image reference",
    ),
]


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Iterator[client.CustomObjectsApi]:
    install_crd(cluster.kubectl)
    api_client = config.new_client_from_config(str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    yield client.CustomObjectsApi(api_client)
    api_client.close()


def test_at_least_fifteen_cases() -> None:
    assert len(CASES) >= 15


def test_valid_object_is_accepted(api: client.CustomObjectsApi, namespace: str) -> None:
    """The baseline every case mutates is itself valid (so each rejection is for the mutation)."""
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, VALID, dry_run="All")


@pytest.mark.parametrize(("obj", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_inference_service_rejected(
    api: client.CustomObjectsApi, namespace: str, obj: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ApiException) as info:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj)
    exc = info.value
    assert exc.status in (400, 422), (exc.status, exc.body)
    message = json.loads(exc.body).get("message", "") if exc.body else ""
    assert fragment in message, f"expected {fragment!r} in the API server's message:\n{message}"
    # nothing was stored
    listed: Any = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    assert listed["items"] == []
