"""The API server itself rejects invalid InferenceServices (schema + CEL rules of the CRD)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infera_testenv.cluster import Cluster

pytestmark = pytest.mark.integration

M = {"model": {"uri": "/models/tiny"}}

INVALID: list[tuple[str, str, dict[str, Any], str]] = [
    ("min-gt-max", "ok", {**M, "autoscaling": {"minReplicas": 5, "maxReplicas": 2, "targetInFlightRequests": 1}},
     "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas"),
    ("tp-not-dividing", "ok", {**M, "engine": {"tensorParallelSize": 4}, "resources": {"gpus": 6}},
     "engine.tensorParallelSize must divide resources.gpus"),
    ("tp-without-gpus", "ok", {**M, "engine": {"tensorParallelSize": 2}, "resources": {"gpus": 0}},
     "engine.tensorParallelSize must divide resources.gpus"),
    ("name-not-dns1035", "9lives", M, "metadata.name must be a DNS-1035 label"),
    ("bad-uri-scheme", "ok", {"model": {"uri": "s3://bucket/model"}}, "model.uri must be hf://ORG/NAME"),
    ("missing-model", "ok", {"replicas": 1}, "spec.model: Required value"),
    ("revision-not-hf", "ok", {"model": {"uri": "/m", "revision": "main"}}, "model.revision only applies to hf://"),
    ("no-autoscaling-target", "ok", {**M, "autoscaling": {"maxReplicas": 3}}, "autoscaling needs at least one target"),
    ("cpu-target-without-cpu", "ok", {**M, "autoscaling": {"maxReplicas": 3, "targetCPUUtilizationPercentage": 60}},
     "autoscaling.targetCPUUtilizationPercentage needs resources.cpu"),
    ("gpu-type-without-gpus", "ok", {**M, "resources": {"gpus": 0, "gpuType": "NVIDIA-H100"}},
     "resources.gpuType needs resources.gpus greater than 0"),
    ("bad-cpu-quantity", "ok", {**M, "resources": {"cpu": "lots"}}, "resources.cpu must be a Kubernetes quantity"),
    ("bad-memory-quantity", "ok", {**M, "resources": {"memory": "32 GB"}}, "resources.memory must be a Kubernetes quantity"),
    ("negative-replicas", "ok", {**M, "replicas": -1}, "spec.replicas: Invalid value: -1"),
    ("unknown-engine", "ok", {**M, "engine": {"type": "tgi"}}, 'spec.engine.type: Unsupported value: "tgi"'),
    ("gpu-utilisation-above-1", "ok", {**M, "engine": {"gpuMemoryUtilization": 1.5}},
     "spec.engine.gpuMemoryUtilization: Invalid value: 1.5"),
    ("env-value-and-valuefrom", "ok", {**M, "env": [{"name": "A", "value": "x", "valueFrom": {"fieldRef": {}}}]},
     "an env entry may have value or valueFrom, not both"),
    ("env-overrides-config-file", "ok", {**M, "env": [{"name": "INFERA_CONFIG_FILE", "value": "/x"}]},
     "env must not set INFERA_CONFIG_FILE"),
    ("reserved-label", "ok", {**M, "labels": {"app.kubernetes.io/name": "x"}},
     "labels must not use the prefixes app.kubernetes.io/ or infera.dev/"),
    ("bad-quantization", "ok", {**M, "engine": {"quantization": "AWQ 4bit"}},
     "engine.quantization must be a vLLM quantization method name"),
    ("bad-served-name", "ok", {"model": {"uri": "/m", "servedName": "-x y"}}, "model.servedName may contain only"),
    ("image-with-space", "ok", {**M, "runtime": {"image": "my image"}}, "runtime.image must be a non-empty image reference"),
    ("bad-secret-name", "ok", {**M, "apiKeySecretRef": {"name": "Keys_1"}}, "apiKeySecretRef.name must be a valid Secret name"),
    ("startup-timeout-too-short", "ok", {**M, "probes": {"startupTimeoutSeconds": 1}},
     "spec.probes.startupTimeoutSeconds: Invalid value: 1"),
]  # fmt: skip


def manifest(name: str, spec: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": "infera.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


@pytest.mark.parametrize(
    ("name", "spec", "message"), [case[1:] for case in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_inference_service_is_rejected(
    crd: Cluster, name: str, spec: dict[str, Any], message: str
) -> None:
    proc = crd.kubectl("create", "--dry-run=server", "-f", "-", input=manifest(name, spec), check=False)
    assert proc.returncode != 0, f"accepted: {spec}"
    assert "is invalid" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_a_full_valid_spec_is_accepted_and_defaulted(crd: Cluster) -> None:
    spec = {
        "model": {"uri": "hf://meta-llama/Llama-3.1-70B-Instruct", "servedName": "llama-70b", "revision": "main"},
        "engine": {"tensorParallelSize": 4, "quantization": "fp8", "extraArgs": {"enable_prefix_caching": True}},
        "resources": {"gpus": 8, "gpuType": "NVIDIA-H100-80GB-HBM3", "cpu": "16", "memory": "256Gi", "sharedMemory": "32Gi"},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "targetInFlightRequests": 32, "targetCPUUtilizationPercentage": 80},
        "apiKeySecretRef": {"name": "llama-keys"},
        "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
        "labels": {"team": "ml"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
    }  # fmt: skip
    proc = crd.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=manifest("llama", spec))
    out = json.loads(proc.stdout)["spec"]
    assert out["engine"]["gpuMemoryUtilization"] == 0.9
    assert out["engine"]["type"] == "vllm"
    assert out["apiKeySecretRef"]["key"] == "api-keys"
    assert out["autoscaling"]["scaleDownStabilizationSeconds"] == 300
    assert out["probes"]["startupTimeoutSeconds"] == 1800


def test_enough_invalid_cases() -> None:
    assert len(INVALID) >= 15
