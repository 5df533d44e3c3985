"""Pure rendering of an InferenceService's children (no API server)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from infera_operator import render
from infera_operator.constants import (
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_DESIRED_HASH,
    API_KEY_DIR,
    CONFIG_FILE,
    GPU_RESOURCE,
    LABEL_ISVC,
    LABEL_MANAGED_BY,
)

Obj = dict[str, Any]


def cr(spec: Obj | None = None, name: str = "chat", namespace: str = "team") -> Obj:
    return {
        "apiVersion": "infera.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace, "uid": "u-1", "generation": 3},
        "spec": {"model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, **(spec or {})},
    }


def container(dep: Obj) -> Obj:
    c: Obj = dep["spec"]["template"]["spec"]["containers"][0]
    return c


def test_configmap_holds_the_runtime_settings() -> None:
    cm = render.render_configmap(
        cr(
            {
                "engine": {
                    "dtype": "bfloat16",
                    "maxModelLen": 4096,
                    "extraArgs": {"enable_prefix_caching": True},
                }
            }
        )
    )
    assert cm["metadata"]["name"] == "chat-config"
    conf = json.loads(cm["data"]["runtime.json"])
    assert conf["model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert conf["served_model_name"] == "Qwen2.5-0.5B-Instruct"
    assert conf["dtype"] == "bfloat16"
    assert conf["max_model_len"] == 4096
    assert conf["engine_args"] == {"enable_prefix_caching": True}
    assert conf["port"] == 8000
    assert "api_key_file" not in conf


def test_deployment_gpu_probes_shm_nonroot_and_scrape_annotations() -> None:
    dep = render.render_deployment(
        cr({"resources": {"gpus": 2, "gpuType": "NVIDIA-A100", "sharedMemory": "8Gi"}})
    )
    c = container(dep)
    assert c["resources"]["limits"][GPU_RESOURCE] == "2"
    assert c["resources"]["requests"][GPU_RESOURCE] == "2"
    assert c["startupProbe"]["httpGet"]["path"] == "/health/startup"
    # the default 1800 s model-load budget at a 10 s period
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 1800
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    pod = dep["spec"]["template"]["spec"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100"}
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "8000"
    assert {"name": "INFERA_CONFIG_FILE", "value": CONFIG_FILE} in c["env"]
    assert dep["spec"]["replicas"] == 1
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert dep["metadata"]["ownerReferences"][0]["controller"] is True
    assert dep["spec"]["template"]["metadata"]["labels"][LABEL_ISVC] == "chat"


def test_cpu_only_deployment_has_no_gpu_request_or_toleration() -> None:
    dep = render.render_deployment(cr({"resources": {"gpus": 0, "cpu": 2, "memory": "4Gi"}}))
    c = container(dep)
    assert GPU_RESOURCE not in c["resources"].get("limits", {})
    assert c["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert "tolerations" not in dep["spec"]["template"]["spec"]


def config_hash(dep: Obj) -> str:
    return str(dep["spec"]["template"]["metadata"]["annotations"][ANNOTATION_CONFIG_HASH])


def test_config_change_changes_the_pod_template_hash_and_nothing_else_does() -> None:
    base = render.render_deployment(cr())
    same = render.render_deployment(cr({"labels": {}}))
    changed = render.render_deployment(cr({"engine": {"maxModelLen": 2048}}))
    assert config_hash(base) == config_hash(same)
    assert config_hash(base) != config_hash(changed)


def test_replicas_omitted_when_the_hpa_owns_scaling() -> None:
    dep = render.render_deployment(
        cr({"replicas": 3, "autoscaling": {"maxReplicas": 5, "targetInFlightRequests": 8}})
    )
    assert "replicas" not in dep["spec"]
    hpa = render.render_hpa(
        cr({"autoscaling": {"minReplicas": 2, "maxReplicas": 5, "targetInFlightRequests": 8}})
    )
    assert hpa is not None
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] == 5
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat"}
    metric = hpa["spec"]["metrics"][0]["pods"]
    assert metric["metric"]["name"] == "infera_requests_in_flight"
    assert metric["target"] == {"type": "AverageValue", "averageValue": "8"}
    assert render.render_hpa(cr()) is None


def test_pvc_model_and_api_key_are_mounted() -> None:
    c = cr({"model": {"uri": "pvc://models/llama/8b"}, "apiKeySecretRef": {"name": "keys", "key": "k"}})
    dep = render.render_deployment(c)
    pod = dep["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert vols["api-keys"]["secret"]["secretName"] == "keys"
    conf = render.runtime_config(c)
    assert conf["model"] == "/models/llama/8b"
    assert conf["api_key_file"] == f"{API_KEY_DIR}/k"


def test_service_maps_port_80_to_the_named_container_port() -> None:
    svc = render.render_service(cr())
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == render.selector_labels("chat")
    assert svc["metadata"]["labels"][LABEL_MANAGED_BY] == "infera-operator"


def test_user_labels_cannot_override_the_operators() -> None:
    svc = render.render_service(cr({"labels": {"team": "a"}}))
    assert svc["metadata"]["labels"]["team"] == "a"
    assert svc["metadata"]["labels"][LABEL_ISVC] == "chat"


def test_rendering_is_deterministic_and_hashes_the_whole_manifest() -> None:
    a = render.render_children(cr())
    b = render.render_children(copy.deepcopy(cr()))
    assert a == b
    kinds = [k for k, _ in a]
    assert kinds == ["ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"]
    assert a[3][1] is None
    changed = render.render_children(cr({"replicas": 2}))
    hashes = [ch[1][1]["metadata"]["annotations"][ANNOTATION_DESIRED_HASH] for ch in (a, changed) if ch[1][1]]
    assert len(hashes) == 2 and hashes[0] != hashes[1]


@pytest.mark.parametrize(
    ("name", "spec", "fragment"),
    [
        ("Bad_Name", {}, "DNS-1035"),
        ("ok", {"model": {"uri": "s3://bucket/model"}}, "model.uri"),
        ("ok", {"model": {"uri": "/m", "revision": "main"}}, "revision only applies"),
        ("ok", {"engine": {"tensorParallelSize": 4}, "resources": {"gpus": 6}}, "must divide resources.gpus"),
        ("ok", {"engine": {"extraArgs": {"dtype": "half"}}}, "extraArgs must not set dtype"),
        (
            "ok",
            {"autoscaling": {"minReplicas": 5, "maxReplicas": 2, "targetInFlightRequests": 1}},
            "minReplicas",
        ),
        ("ok", {"autoscaling": {"maxReplicas": 2}}, "at least one target"),
        (
            "ok",
            {"autoscaling": {"maxReplicas": 2, "targetCPUUtilizationPercentage": 50}},
            "needs resources.cpu",
        ),
        ("ok", {"labels": {"infera.dev/x": "y"}}, "reserved prefixes"),
    ],
)
def test_validation_names_the_problem(name: str, spec: Obj, fragment: str) -> None:
    full = {"model": {"uri": "hf://org/model"}, **spec}
    problems = render.validate(name, full)
    assert any(fragment in p for p in problems), problems
    with pytest.raises(render.InvalidSpecError):
        render.render_children(cr(full, name=name))


def test_a_valid_spec_has_no_problems() -> None:
    spec = {"model": {"uri": "hf://org/m"}, "engine": {"tensorParallelSize": 4}, "resources": {"gpus": 8}}
    assert render.validate("llama-70b", spec) == []


def test_engine_serving_fields_reach_the_runtime_settings() -> None:
    spec = {
        "model": {"uri": "hf://Qwen/Qwen2.5-7B-Instruct"},
        "engine": {
            "toolCallParser": "hermes",
            "enableAutoToolChoice": True,
            "reasoningParser": "qwen3",
            "chatTemplate": "{{ messages[0].content }}",
            "structuredOutputsBackend": "xgrammar",
            "maxNumSeqs": 128,
            "maxNumBatchedTokens": 4096,
        },
    }
    conf = render.runtime_config(cr(spec))
    assert {k: conf[k] for k, _ in render.ENGINE_SERVE_FIELDS} == {
        "tool_call_parser": "hermes",
        "enable_auto_tool_choice": True,
        "reasoning_parser": "qwen3",
        "chat_template": "{{ messages[0].content }}",
        "structured_outputs_backend": "xgrammar",
        "max_num_seqs": 128,
        "max_num_batched_tokens": 4096,
    }
    plain = render.runtime_config(cr({"model": {"uri": "hf://Qwen/Qwen2.5-7B-Instruct"}}))
    assert not set(plain) & {k for k, _ in render.ENGINE_SERVE_FIELDS}


def test_auto_tool_choice_needs_a_parser_and_typed_fields_stay_out_of_extra_args() -> None:
    problems = render.validate("chat", {"model": {"uri": "/m"}, "engine": {"enableAutoToolChoice": True}})
    assert any("enableAutoToolChoice needs engine.toolCallParser" in p for p in problems)
    problems = render.validate("chat", {"model": {"uri": "/m"}, "engine": {"extraArgs": {"max_num_seqs": 8}}})
    assert any("max_num_seqs" in p for p in problems)
