"""Pure rendering: an InferenceService (as a dict) -> the manifests of its children.

No I/O here. Every function is deterministic in its inputs, so a reconcile with nothing changed
renders byte-identical manifests (and ``desired_hash`` sees no change). Defaults mirror the CRD's
(``crds/infera.dev_inferenceservices.yaml``); the API server applies those before the operator
reads an object, and the renderer applies the same ones so that it also works on bare specs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from infera_operator.constants import (
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_DESIRED_HASH,
    API_KEY_DIR,
    API_VERSION,
    CACHE_DIR,
    CONFIG_DIR,
    CONFIG_FILE,
    CONFIG_KEY,
    DEFAULT_RUNTIME_IMAGE,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    KIND,
    LABEL_INSTANCE,
    LABEL_ISVC,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
    METRIC_IN_FLIGHT,
    METRIC_QUEUED,
    MODELS_DIR,
    PORT_NAME,
    RUNTIME_APP_NAME,
    RUNTIME_PORT,
    SERVICE_PORT,
)

Obj = dict[str, Any]

# Engine arguments that have a typed field in the spec; extraArgs must not set them.
TYPED_ENGINE_ARGS = (
    "model",
    "served_model_name",
    "dtype",
    "max_model_len",
    "gpu_memory_utilization",
    "tensor_parallel_size",
    "quantization",
    "enforce_eager",
    "revision",
    "tool_call_parser",
    "enable_auto_tool_choice",
    "reasoning_parser",
    "chat_template",
    "structured_outputs_config",
    "max_num_seqs",
    "max_num_batched_tokens",
)
# spec.engine fields passed to the runtime as they are (runtime setting, spec field).
ENGINE_SERVE_FIELDS = (
    ("tool_call_parser", "toolCallParser"),
    ("enable_auto_tool_choice", "enableAutoToolChoice"),
    ("reasoning_parser", "reasoningParser"),
    ("chat_template", "chatTemplate"),
    ("structured_outputs_backend", "structuredOutputsBackend"),
    ("max_num_seqs", "maxNumSeqs"),
    ("max_num_batched_tokens", "maxNumBatchedTokens"),
)
RESERVED_LABEL_PREFIXES = ("app.kubernetes.io/", "infera.dev/")
MODEL_URI_RE = re.compile(
    r"^(hf://[A-Za-z0-9][-A-Za-z0-9_.]*/[-A-Za-z0-9_.]+|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^/].*)?|/[^ ]*)$"
)
DNS1035_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

# Extra seconds a stopping pod gets beyond the runtime's own drain time.
TERMINATION_GRACE_MARGIN_S = 15
STARTUP_PERIOD_S = 10
# Rollouts load a model on every new pod; give the Deployment controller a generous deadline.
MIN_PROGRESS_DEADLINE_S = 600


@dataclass(frozen=True)
class OperatorConfig:
    """Operator-wide settings that shape the children (flags / environment of the operator)."""

    runtime_image: str = DEFAULT_RUNTIME_IMAGE


class InvalidSpecError(ValueError):
    """The spec cannot be rendered; ``problems`` says why, one entry per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# ---------------------------------------------------------------------- spec access with defaults
def _sub(spec: Obj, key: str) -> Obj:
    value = spec.get(key)
    return value if isinstance(value, dict) else {}


def engine_spec(spec: Obj) -> Obj:
    e = _sub(spec, "engine")
    return {
        "type": e.get("type", "vllm"),
        "dtype": e.get("dtype", "auto"),
        "maxModelLen": e.get("maxModelLen"),
        "gpuMemoryUtilization": e.get("gpuMemoryUtilization", 0.9),
        "tensorParallelSize": e.get("tensorParallelSize", 1),
        "quantization": e.get("quantization"),
        "enforceEager": e.get("enforceEager", False),
        "maxConcurrentRequests": e.get("maxConcurrentRequests", 256),
        "maxQueuedRequests": e.get("maxQueuedRequests", 512),
        "requestTimeoutSeconds": e.get("requestTimeoutSeconds", 600),
        "toolCallParser": e.get("toolCallParser"),
        "enableAutoToolChoice": e.get("enableAutoToolChoice", False),
        "reasoningParser": e.get("reasoningParser"),
        "chatTemplate": e.get("chatTemplate"),
        "structuredOutputsBackend": e.get("structuredOutputsBackend"),
        "maxNumSeqs": e.get("maxNumSeqs"),
        "maxNumBatchedTokens": e.get("maxNumBatchedTokens"),
        "extraArgs": dict(e.get("extraArgs") or {}),
    }


def resources_spec(spec: Obj) -> Obj:
    r = _sub(spec, "resources")
    return {
        "gpus": r.get("gpus", 1),
        "gpuType": r.get("gpuType"),
        "cpu": r.get("cpu"),
        "memory": r.get("memory"),
        "sharedMemory": r.get("sharedMemory"),
    }


def runtime_spec(spec: Obj, cfg: OperatorConfig) -> Obj:
    r = _sub(spec, "runtime")
    return {
        "image": r.get("image") or cfg.runtime_image,
        "imagePullPolicy": r.get("imagePullPolicy", "IfNotPresent"),
        "imagePullSecrets": list(r.get("imagePullSecrets") or []),
        "logLevel": r.get("logLevel", "info"),
        "logFormat": r.get("logFormat", "json"),
        "shutdownGracePeriodSeconds": r.get("shutdownGracePeriodSeconds", 30),
    }


def probes_spec(spec: Obj) -> Obj:
    p = _sub(spec, "probes")
    return {
        "startupTimeoutSeconds": p.get("startupTimeoutSeconds", 1800),
        "readinessPeriodSeconds": p.get("readinessPeriodSeconds", 5),
        "livenessPeriodSeconds": p.get("livenessPeriodSeconds", 10),
        "livenessFailureThreshold": p.get("livenessFailureThreshold", 3),
    }


def autoscaling_spec(spec: Obj) -> Obj | None:
    a = spec.get("autoscaling")
    if not isinstance(a, dict):
        return None
    return {
        "minReplicas": a.get("minReplicas", 1),
        "maxReplicas": a.get("maxReplicas", a.get("minReplicas", 1)),
        "targetInFlightRequests": a.get("targetInFlightRequests"),
        "targetQueuedRequests": a.get("targetQueuedRequests"),
        "targetCPUUtilizationPercentage": a.get("targetCPUUtilizationPercentage"),
        "scaleDownStabilizationSeconds": a.get("scaleDownStabilizationSeconds", 300),
    }


def desired_replicas(spec: Obj) -> int | None:
    """Replicas the operator sets on the Deployment; None when an HPA owns the count."""
    if autoscaling_spec(spec) is not None:
        return None
    return int(spec.get("replicas", 1))


# ---------------------------------------------------------------------- validation
def validate(name: str, spec: Obj) -> list[str]:
    """Problems that make the spec impossible to serve, in words for a person.

    The CRD's schema and CEL rules reject most of these at admission; the operator checks again
    (objects stored before a rule existed, or a CRD installed without them) and checks what CEL
    cannot express (engine.extraArgs keys).
    """
    problems: list[str] = []
    if not (len(name) <= 63 and DNS1035_RE.match(name)):
        problems.append(f"metadata.name {name!r} must be a DNS-1035 label: it also names the Service")
    model = _sub(spec, "model")
    uri = model.get("uri")
    if not isinstance(uri, str) or not MODEL_URI_RE.match(uri):
        problems.append(f"model.uri {uri!r} must be hf://ORG/NAME, pvc://CLAIM[/PATH] or an absolute path")
    elif model.get("revision") and not uri.startswith("hf://"):
        problems.append("model.revision only applies to hf:// models")
    engine = engine_spec(spec)
    res = resources_spec(spec)
    tp, gpus = int(engine["tensorParallelSize"]), int(res["gpus"])
    if tp < 1:
        problems.append("engine.tensorParallelSize must be at least 1")
    elif tp > 1 and (gpus <= 0 or gpus % tp):
        problems.append(f"engine.tensorParallelSize ({tp}) must divide resources.gpus ({gpus})")
    if gpus < 0:
        problems.append("resources.gpus must not be negative")
    if engine["enableAutoToolChoice"] and not engine["toolCallParser"]:
        problems.append("engine.enableAutoToolChoice needs engine.toolCallParser")
    clash = sorted(k for k in engine["extraArgs"] if k in TYPED_ENGINE_ARGS)
    if clash:
        problems.append(
            f"engine.extraArgs must not set {', '.join(clash)}: use the typed fields of spec.model and spec.engine"
        )
    auto = autoscaling_spec(spec)
    if auto is not None:
        if auto["minReplicas"] > auto["maxReplicas"]:
            problems.append(
                f"autoscaling.minReplicas ({auto['minReplicas']}) must be less than or equal to "
                f"autoscaling.maxReplicas ({auto['maxReplicas']})"
            )
        if not any(
            auto[k]
            for k in ("targetInFlightRequests", "targetQueuedRequests", "targetCPUUtilizationPercentage")
        ):
            problems.append("autoscaling needs at least one target")
        if auto["targetCPUUtilizationPercentage"] and res["cpu"] is None:
            problems.append("autoscaling.targetCPUUtilizationPercentage needs resources.cpu")
    bad = sorted(k for k in (spec.get("labels") or {}) if k.startswith(RESERVED_LABEL_PREFIXES))
    if bad:
        problems.append(
            f"labels must not use the reserved prefixes app.kubernetes.io/ or infera.dev/: {', '.join(bad)}"
        )
    return problems


# ---------------------------------------------------------------------- helpers
def selector_labels(name: str) -> dict[str, str]:
    """The pods' selector (immutable on the Deployment: never change it)."""
    return {LABEL_NAME: RUNTIME_APP_NAME, LABEL_ISVC: name}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(name).items()))


def standard_labels(name: str) -> dict[str, str]:
    return {
        LABEL_NAME: RUNTIME_APP_NAME,
        LABEL_INSTANCE: name,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_ISVC: name,
    }


def child_labels(name: str, spec: Obj) -> dict[str, str]:
    user = {
        k: str(v) for k, v in (spec.get("labels") or {}).items() if not k.startswith(RESERVED_LABEL_PREFIXES)
    }
    return {**user, **standard_labels(name)}


def owner_reference(cr: Obj) -> Obj:
    meta = cr["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(cr: Obj, name: str) -> Obj:
    spec = cr.get("spec") or {}
    meta: Obj = {
        "name": name,
        "namespace": cr["metadata"]["namespace"],
        "labels": child_labels(cr["metadata"]["name"], spec),
        "ownerReferences": [owner_reference(cr)],
    }
    if spec.get("annotations"):
        meta["annotations"] = {k: str(v) for k, v in sorted(spec["annotations"].items())}
    return meta


def config_map_name(name: str) -> str:
    return f"{name}-config"


def service_url(name: str, namespace: str) -> str:
    return f"http://{name}.{namespace}.svc.cluster.local/v1"


def quantity(value: Any) -> str:
    """A quantity as the API takes it (ints become strings)."""
    return str(value)


def stable_hash(obj: Any, length: int = 16) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def resolve_model(uri: str) -> tuple[str, str | None]:
    """(the runtime's ``model`` setting, the PVC to mount at /models or None)."""
    if uri.startswith("hf://"):
        return uri[len("hf://") :], None
    if uri.startswith("pvc://"):
        claim, _, path = uri[len("pvc://") :].partition("/")
        return (f"{MODELS_DIR}/{path}".rstrip("/") if path else MODELS_DIR), claim
    return uri, None


def default_served_name(model: str) -> str:
    return model.rstrip("/").rsplit("/", 1)[-1] or model


# ---------------------------------------------------------------------- runtime configuration
def runtime_config(cr: Obj, cfg: OperatorConfig | None = None) -> Obj:
    """The runtime's JSON settings file (CONTRACT.md, Runtime), snake_case keys."""
    cfg = cfg or OperatorConfig()
    spec = cr.get("spec") or {}
    problems = validate(cr["metadata"]["name"], spec)
    if problems:
        raise InvalidSpecError(problems)
    model_spec = _sub(spec, "model")
    model, _ = resolve_model(model_spec["uri"])
    engine = engine_spec(spec)
    runtime = runtime_spec(spec, cfg)
    engine_args = dict(sorted(engine["extraArgs"].items()))
    if model_spec.get("revision"):
        engine_args["revision"] = model_spec["revision"]
    conf: Obj = {
        "host": "0.0.0.0",
        "port": RUNTIME_PORT,
        "model": model,
        "served_model_name": model_spec.get("servedName") or default_served_name(model),
        "engine": engine["type"],
        "dtype": engine["dtype"],
        "gpu_memory_utilization": engine["gpuMemoryUtilization"],
        "tensor_parallel_size": engine["tensorParallelSize"],
        "enforce_eager": engine["enforceEager"],
        "engine_args": engine_args,
        "max_inflight": engine["maxConcurrentRequests"],
        "max_queue": engine["maxQueuedRequests"],
        "request_timeout_s": engine["requestTimeoutSeconds"],
        "shutdown_grace_s": runtime["shutdownGracePeriodSeconds"],
        "log_format": runtime["logFormat"],
        "log_level": runtime["logLevel"],
    }
    if engine["maxModelLen"] is not None:
        conf["max_model_len"] = engine["maxModelLen"]
    if engine["quantization"]:
        conf["quantization"] = engine["quantization"]
    for key, field in ENGINE_SERVE_FIELDS:
        if engine[field] not in (None, False):
            conf[key] = engine[field]
    key_ref = spec.get("apiKeySecretRef")
    if isinstance(key_ref, dict):
        conf["api_key_file"] = f"{API_KEY_DIR}/{key_ref.get('key', 'api-keys')}"
    return conf


def config_text(conf: Obj) -> str:
    return json.dumps(conf, sort_keys=True, indent=2) + "\n"


# ---------------------------------------------------------------------- children
def render_configmap(cr: Obj, cfg: OperatorConfig | None = None) -> Obj:
    name = cr["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(cr, config_map_name(name)),
        "data": {CONFIG_KEY: config_text(runtime_config(cr, cfg))},
    }


def _probe(path: str, period: int, failures: int, timeout: int = 5) -> Obj:
    return {
        "httpGet": {"path": path, "port": PORT_NAME, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
        "successThreshold": 1,
    }


def render_deployment(cr: Obj, cfg: OperatorConfig | None = None) -> Obj:
    cfg = cfg or OperatorConfig()
    name = cr["metadata"]["name"]
    spec = cr.get("spec") or {}
    conf = runtime_config(cr, cfg)
    res = resources_spec(spec)
    runtime = runtime_spec(spec, cfg)
    probes = probes_spec(spec)
    _, claim = resolve_model(_sub(spec, "model")["uri"])
    gpus = int(res["gpus"])

    requests: Obj = {}
    limits: Obj = {}
    if res["cpu"] is not None:
        requests["cpu"] = quantity(res["cpu"])
    if res["memory"] is not None:
        requests["memory"] = limits["memory"] = quantity(res["memory"])
    if gpus > 0:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(gpus)
    resources: Obj = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits

    env: list[Obj] = [
        {"name": "INFERA_CONFIG_FILE", "value": CONFIG_FILE},
        {"name": "HOME", "value": CACHE_DIR},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
    ]
    own = {e["name"] for e in env}
    for item in spec.get("env") or []:
        entry = {k: copy.deepcopy(item[k]) for k in ("name", "value", "valueFrom") if k in item}
        if entry["name"] in own:
            env = [e for e in env if e["name"] != entry["name"]]
        env.append(entry)

    mounts: list[Obj] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    shm: Obj = {"medium": "Memory"}
    if res["sharedMemory"] is not None:
        shm["sizeLimit"] = quantity(res["sharedMemory"])
    volumes: list[Obj] = [
        {"name": "config", "configMap": {"name": config_map_name(name), "defaultMode": 0o444}},
        {"name": "dshm", "emptyDir": shm},
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    key_ref = spec.get("apiKeySecretRef")
    if isinstance(key_ref, dict):
        mounts.append({"name": "api-keys", "mountPath": API_KEY_DIR, "readOnly": True})
        volumes.append({"name": "api-keys", "secret": {"secretName": key_ref["name"], "defaultMode": 0o440}})
    if claim:
        mounts.append({"name": "model", "mountPath": MODELS_DIR, "readOnly": True})
        volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})

    container: Obj = {
        "name": "runtime",
        "image": runtime["image"],
        "imagePullPolicy": runtime["imagePullPolicy"],
        "ports": [{"name": PORT_NAME, "containerPort": RUNTIME_PORT, "protocol": "TCP"}],
        "env": env,
        "startupProbe": _probe(
            "/health/startup",
            STARTUP_PERIOD_S,
            max(1, math.ceil(probes["startupTimeoutSeconds"] / STARTUP_PERIOD_S)),
        ),
        "readinessProbe": _probe("/health/ready", probes["readinessPeriodSeconds"], 3),
        "livenessProbe": _probe(
            "/health/live", probes["livenessPeriodSeconds"], probes["livenessFailureThreshold"]
        ),
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if resources:
        container["resources"] = resources

    node_selector = {str(k): str(v) for k, v in sorted((spec.get("nodeSelector") or {}).items())}
    if gpus > 0 and res["gpuType"]:
        node_selector[GPU_PRODUCT_LABEL] = str(res["gpuType"])
    tolerations: list[Obj] = []
    if gpus > 0:
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    for t in spec.get("tolerations") or []:
        t = {k: v for k, v in t.items() if v is not None}
        if t not in tolerations:
            tolerations.append(t)

    pod_annotations: Obj = {
        **{k: str(v) for k, v in (spec.get("annotations") or {}).items()},
        **{k: str(v) for k, v in (spec.get("podAnnotations") or {}).items()},
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(RUNTIME_PORT),
        "prometheus.io/path": "/metrics",
        ANNOTATION_CONFIG_HASH: stable_hash(config_text(conf)),
    }
    pod_spec: Obj = {
        "containers": [container],
        "volumes": volumes,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": runtime["shutdownGracePeriodSeconds"] + TERMINATION_GRACE_MARGIN_S,
        "enableServiceLinks": False,
    }
    if node_selector:
        pod_spec["nodeSelector"] = dict(sorted(node_selector.items()))
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if spec.get("affinity"):
        pod_spec["affinity"] = copy.deepcopy(spec["affinity"])
    for key in ("serviceAccountName", "priorityClassName", "runtimeClassName"):
        if spec.get(key):
            pod_spec[key] = spec[key]
    if runtime["imagePullSecrets"]:
        pod_spec["imagePullSecrets"] = [{"name": s["name"]} for s in runtime["imagePullSecrets"]]

    dep_spec: Obj = {
        "selector": {"matchLabels": selector_labels(name)},
        "progressDeadlineSeconds": max(MIN_PROGRESS_DEADLINE_S, probes["startupTimeoutSeconds"] + 300),
        "revisionHistoryLimit": 5,
        "template": {
            "metadata": {
                "labels": child_labels(name, spec),
                "annotations": dict(sorted(pod_annotations.items())),
            },
            "spec": pod_spec,
        },
    }
    replicas = desired_replicas(spec)
    if replicas is not None:  # with autoscaling the HPA owns replicas: leave the field out
        dep_spec = {"replicas": replicas, **dep_spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(cr, name),
        "spec": dep_spec,
    }


def render_service(cr: Obj, cfg: OperatorConfig | None = None) -> Obj:
    name = cr["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(cr, name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name),
            "ports": [{"name": PORT_NAME, "port": SERVICE_PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def render_hpa(cr: Obj, cfg: OperatorConfig | None = None) -> Obj | None:
    """The HorizontalPodAutoscaler, or None without spec.autoscaling."""
    name = cr["metadata"]["name"]
    auto = autoscaling_spec(cr.get("spec") or {})
    if auto is None:
        return None
    metrics: list[Obj] = []
    for metric, key in (
        (METRIC_IN_FLIGHT, "targetInFlightRequests"),
        (METRIC_QUEUED, "targetQueuedRequests"),
    ):
        if auto[key]:
            metrics.append(
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": metric},
                        "target": {"type": "AverageValue", "averageValue": str(auto[key])},
                    },
                }
            )
    if auto["targetCPUUtilizationPercentage"]:
        metrics.append(
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {
                        "type": "Utilization",
                        "averageUtilization": auto["targetCPUUtilizationPercentage"],
                    },
                },
            }
        )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": child_metadata(cr, name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": auto["minReplicas"],
            "maxReplicas": auto["maxReplicas"],
            "metrics": metrics,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": auto["scaleDownStabilizationSeconds"]}},
        },
    }


def with_desired_hash(manifest: Obj) -> Obj:
    """The manifest plus an annotation with the hash of everything else in it.

    The hash tells the reconciler whether the spec-derived manifest changed since it was last
    applied, which covers fields that were *removed* from the desired state (a subset
    comparison with the live object cannot see those).
    """
    out = copy.deepcopy(manifest)
    annotations = out["metadata"].setdefault("annotations", {})
    annotations.pop(ANNOTATION_DESIRED_HASH, None)
    annotations[ANNOTATION_DESIRED_HASH] = stable_hash(out)
    return out


def render_children(cr: Obj, cfg: OperatorConfig | None = None) -> list[tuple[str, Obj | None]]:
    """(kind, manifest or None meaning 'must not exist') in apply order; raises InvalidSpecError."""
    cfg = cfg or OperatorConfig()
    hpa = render_hpa(cr, cfg)
    return [
        ("ConfigMap", with_desired_hash(render_configmap(cr, cfg))),
        ("Deployment", with_desired_hash(render_deployment(cr, cfg))),
        ("Service", with_desired_hash(render_service(cr, cfg))),
        ("HorizontalPodAutoscaler", with_desired_hash(hpa) if hpa else None),
    ]
