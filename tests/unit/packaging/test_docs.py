"""Docs that are generated or checked: the CRD reference, the examples, the troubleshooting guide."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml
from packaging_support import REPO, operator_reasons

EXAMPLES = sorted((REPO / "e2e" / "examples").glob("*.yaml"))
CRD_FILE = REPO / "crds" / "infera.dev_inferenceservices.yaml"


def load_generator() -> ModuleType:
    path = REPO / "operator" / "docs" / "gen_crd_reference.py"
    spec = importlib.util.spec_from_file_location("gen_crd_reference", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_FILE.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def all_paths(schema: dict[str, Any], prefix: str) -> list[str]:
    out = []
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{name}"
        out.append(path)
        if "properties" in sub:
            out += all_paths(sub, path)
        elif "properties" in sub.get("items", {}):
            out += all_paths(sub["items"], f"{path}[]")
    return out


def test_crd_reference_is_up_to_date() -> None:
    gen = load_generator()
    committed = (REPO / "operator" / "docs" / "crd-reference.md").read_text()
    assert gen.render() == committed, (
        "operator/docs/crd-reference.md is stale: run python operator/docs/gen_crd_reference.py"
    )


def test_crd_reference_lists_every_field() -> None:
    ref = (REPO / "operator" / "docs" / "crd-reference.md").read_text()
    root = crd_schema()
    for part in ("spec", "status"):
        for path in all_paths(root["properties"][part], part):
            assert f"| `{path}` |" in ref, path


def test_crd_reference_follows_the_schema(tmp_path: Path) -> None:
    """A change to the CRD changes the rendering (the up-to-date check is live)."""
    gen = load_generator()
    crd = yaml.safe_load(CRD_FILE.read_text())
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    props["replicas"]["description"] = "CHANGED in the test"
    props["replicas"]["maximum"] = 7
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(crd))
    text = gen.render(tmp_path)
    assert "CHANGED in the test (min 0; max 7)" in text
    assert text != gen.render()


def example_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_examples_cover_the_documented_cases() -> None:
    names = {p.name for p in EXAMPLES}
    assert {
        "chat-7b-1gpu.yaml",
        "llama-70b-tp4.yaml",
        "autoscaling-inflight.yaml",
        "api-key-auth.yaml",
    } <= names
    by_name = {p.name: next(d for d in example_docs(p) if d["kind"] == "InferenceService") for p in EXAMPLES}
    assert by_name["chat-7b-1gpu.yaml"]["spec"]["resources"]["gpus"] == 1
    tp = by_name["llama-70b-tp4.yaml"]["spec"]
    assert tp["engine"]["tensorParallelSize"] == 4 and tp["resources"]["gpus"] == 4
    assert by_name["autoscaling-inflight.yaml"]["spec"]["autoscaling"]["targetInFlightRequests"] > 0
    auth = example_docs(REPO / "e2e" / "examples" / "api-key-auth.yaml")
    secret = next(d for d in auth if d["kind"] == "Secret")
    ref = by_name["api-key-auth.yaml"]["spec"]["apiKeySecretRef"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_matches_the_crd_schema(path: Path) -> None:
    """Structural validation offline (types, enums, required, limits); the CEL rules are checked by the
    API server in tests/integration/packaging/test_examples_server.py."""
    schema = crd_schema()
    isvcs = [d for d in example_docs(path) if d["kind"] == "InferenceService"]
    assert len(isvcs) == 1
    doc = isvcs[0]
    assert doc["apiVersion"] == "infera.dev/v1alpha1"
    assert "namespace" not in doc["metadata"], "examples apply to the current namespace"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)
    header = path.read_text().split("apiVersion", 1)[0]
    assert header.strip().startswith("#"), f"{path.name}: start with a comment saying what it shows"


def test_schema_validation_is_live() -> None:
    bad = {"apiVersion": "infera.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "x"},
           "spec": {"model": {"uri": "/m"}, "engine": {"dtype": "int3"}}}  # fmt: skip
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, crd_schema(), cls=jsonschema.Draft7Validator)


# --------------------------------------------------------------------------------- troubleshooting
TROUBLESHOOTING = REPO / "operator" / "docs" / "troubleshooting.md"
# Reasons the operator copies from Kubernetes objects (Deployment and HPA conditions); the doc
# explains the common ones. The operator's own reasons are read from its code below.
KUBERNETES_REASONS = {
    "MinimumReplicasAvailable",
    "MinimumReplicasUnavailable",
    "ProgressDeadlineExceeded",
    "ValidMetricFound",
    "FailedGetPodsMetric",
    "FailedGetResourceMetric",
    "FailedGetScale",
    "FailedComputeMetricsReplicas",
}


def documented_reasons() -> set[str]:
    """The reasons with their own heading (``### Reason``) in the troubleshooting guide."""
    return set(re.findall(r"^### ([A-Z][A-Za-z0-9]+)\s*$", TROUBLESHOOTING.read_text(), re.M))


def test_reason_extraction_finds_the_known_reasons() -> None:
    """The extractor is live: it finds reasons of every kind of source in the operator's code."""
    reasons = operator_reasons()
    assert {
        "Serving",
        "RollingOut",
        "ScaledToZero",
        "InvalidSpec",
        "ApplyFailed",
    } <= reasons  # Condition(...)
    assert {"InsufficientGPU", "NoMatchingNodes", "Unschedulable"} <= reasons  # classify_unschedulable
    assert {"CrashLoopBackOff", "ImagePullBackOff"} <= reasons  # FAILING_WAITING_REASONS
    assert {"ProgressDeadlineExceeded", "MinimumReplicasUnavailable"} <= reasons  # defaults after `or`
    assert {"NotAbleToScale", "NotScalingActive"} <= reasons  # f"Not{type_}"
    assert "Ready" in reasons  # the Normal Event when Ready turns True
    assert not {"Normal", "Warning", "True", "False", "Unknown"} & reasons


def test_every_reason_the_operator_emits_is_documented() -> None:
    missing = sorted(operator_reasons() - documented_reasons())
    assert not missing, f"operator/docs/troubleshooting.md has no '### REASON' section for: {missing}"


def test_common_kubernetes_reasons_are_documented() -> None:
    missing = sorted(KUBERNETES_REASONS - documented_reasons())
    assert not missing, missing


def test_troubleshooting_documents_no_reason_that_does_not_exist() -> None:
    """Every heading is a reason the operator emits or copies from Kubernetes (the doc stays accurate)."""
    extra = sorted(documented_reasons() - operator_reasons() - KUBERNETES_REASONS)
    assert not extra, f"troubleshooting.md documents reasons nothing emits: {extra}"
