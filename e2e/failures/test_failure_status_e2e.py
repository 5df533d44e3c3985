"""End to end: when a model cannot serve, `kubectl get`/`kubectl wait` say why.

* the model fails to load: the runtime exits, the pod crash-loops (podsim reports what a kubelet
  would: CrashLoopBackOff, lastState.terminated with the termination message) and the
  InferenceService shows Ready=False with reason CrashLoopBackOff and the runtime's last error line;
* pods ask for more GPUs than any node has: Pending, and Ready=False with reason InsufficientGPU
  and the scheduler's message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infera_testenv.stack import Stack, inference_service

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
NS = "default"


def ready_condition(stack: Stack, name: str) -> dict[str, Any]:
    conds = stack.get(NS, name).get("status", {}).get("conditions", [])
    return next((c for c in conds if c["type"] == "Ready"), {})


def test_model_load_failure_shows_crashloop_and_last_error(stack: Stack, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    manifest = inference_service("broken-model", missing)
    stack.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    cond = stack.wait_for(
        "Ready=False with reason CrashLoopBackOff",
        lambda: (c := ready_condition(stack, "broken-model")).get("reason") == "CrashLoopBackOff" and c,
        timeout=240,
        interval=2,
    )
    assert cond["status"] == "False"
    assert "no-such-model" in cond["message"], cond  # the runtime's own last error line
    # kubectl wait says it too, by failing on a timeout rather than hanging on a wrong answer
    proc = stack.cluster.kubectl(
        "wait", "--for=condition=Ready", "--timeout=3s", "inferenceservice/broken-model", check=False
    )
    assert proc.returncode != 0
    table = stack.cluster.kubectl("get", "inferenceservices", "broken-model").stdout
    assert "False" in table
    stack.cluster.kubectl("delete", "inferenceservice", "broken-model")


def test_insufficient_gpus_shows_reason_from_scheduler(stack: Stack, model: Path) -> None:
    manifest = inference_service("too-big", model, extra_spec={"resources": {"gpus": 12}})
    stack.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    cond = stack.wait_for(
        "Ready=False with reason InsufficientGPU",
        lambda: (c := ready_condition(stack, "too-big")).get("reason") == "InsufficientGPU" and c,
        timeout=120,
        interval=1,
    )
    assert cond["status"] == "False"
    assert "Insufficient nvidia.com/gpu" in cond["message"], cond
    stack.cluster.kubectl("delete", "inferenceservice", "too-big")
