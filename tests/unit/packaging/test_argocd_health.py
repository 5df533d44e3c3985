"""The Argo CD health check (charts/infera/argocd/health.lua), run in Lua 5.1 like Argo CD's gopher-lua."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from packaging_support import CHART, REPO, operator_reasons

from infera_operator import status as st

SCRIPT = (CHART / "argocd" / "health.lua").read_text()


def isvc(generation: int = 3, observed: int | None = 3, conditions: list[dict[str, Any]] | None = None,
         spec: dict[str, Any] | None = None, status: bool = True) -> dict[str, Any]:  # fmt: skip
    obj: dict[str, Any] = {
        "apiVersion": "infera.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "chat", "namespace": "ml", "generation": generation},
        "spec": spec if spec is not None else {"model": {"uri": "hf://org/model"}, "replicas": 2},
    }
    if status:
        st: dict[str, Any] = {"conditions": conditions or [], "replicas": 2, "readyReplicas": 2,
                              "url": "http://chat.ml.svc.cluster.local/v1"}  # fmt: skip
        if observed is not None:
            st["observedGeneration"] = observed
        obj["status"] = st
    return obj


def cond(
    ctype: str, status: str, reason: str = "", message: str = "", gen: int | None = None
) -> dict[str, Any]:
    c: dict[str, Any] = {"type": ctype, "status": status, "lastTransitionTime": "2026-01-01T00:00:00Z"}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    if gen is not None:
        c["observedGeneration"] = gen
    return c


def run(lua51: Any, obj: dict[str, Any]) -> tuple[str, str]:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(copy.deepcopy(obj), recursive=True)
    hs = lua.execute(SCRIPT)
    return str(hs["status"]), str(hs["message"])


def test_ready_and_current_is_healthy(lua51: Any) -> None:
    status, msg = run(lua51, isvc(conditions=[cond("Ready", "True", "Serving", gen=3)]))
    assert status == "Healthy"
    assert "2/2 ready replicas" in msg and "http://chat.ml.svc.cluster.local/v1" in msg


def test_no_status_yet_is_progressing(lua51: Any) -> None:
    assert run(lua51, isvc(status=False))[0] == "Progressing"


def test_unobserved_generation_is_progressing_even_if_ready(lua51: Any) -> None:
    status, msg = run(lua51, isvc(generation=4, observed=3, conditions=[cond("Ready", "True", "Serving")]))
    assert status == "Progressing"
    assert "generation 4" in msg


def test_missing_observed_generation_is_progressing(lua51: Any) -> None:
    assert run(lua51, isvc(observed=None, conditions=[cond("Ready", "True")]))[0] == "Progressing"


def test_ready_condition_for_an_older_generation_is_progressing(lua51: Any) -> None:
    status, _ = run(lua51, isvc(generation=5, observed=5, conditions=[cond("Ready", "True", gen=4)]))
    assert status == "Progressing"


@pytest.mark.parametrize("ready", [None, "Unknown"])
def test_ready_missing_or_unknown_is_progressing(lua51: Any, ready: str | None) -> None:
    conditions = [] if ready is None else [cond("Ready", ready, "Reconciling")]
    assert run(lua51, isvc(conditions=conditions))[0] == "Progressing"


def lua_table(name: str) -> set[str]:
    """The keys of ``local NAME = { Key = true, ... }`` in the script."""
    body = re.search(r"local " + name + r" = \{(.*?)\n\}", SCRIPT, re.S)
    assert body, name
    return set(re.findall(r"^\s*([A-Za-z]+) = true,", body.group(1), re.M))


FAILURE = lua_table("failure_reasons")
PROGRESSING = lua_table("progressing_reasons")
# Reasons that never decide the health: they come only with status True or Unknown, or on
# AutoscalerReady, which is informational in infera (it never gates Ready).
NOT_DECIDING = {"Serving", "Ready", "ConfigApplied", "AllPodsScheduled", "NoPodsWanted",
                "MinimumReplicasAvailable", "AutoscalingDisabled", "HPANotFound", "ScalingActive",
                "NotAbleToScale", "NotScalingActive"}  # fmt: skip


def test_every_operator_reason_is_classified() -> None:
    """A reason the operator starts to emit must be placed here (Degraded, Progressing, Suspended or
    not deciding); and the script names no reason the operator does not emit."""
    reasons = operator_reasons()
    known = FAILURE | PROGRESSING | {"ScaledToZero"} | NOT_DECIDING
    assert not reasons - known, f"classify in health.lua: {sorted(reasons - known)}"
    assert not (FAILURE | PROGRESSING) - reasons, sorted((FAILURE | PROGRESSING) - reasons)
    assert not FAILURE & PROGRESSING


@pytest.mark.parametrize("reason", ["RollingOut", "DeploymentNotFound", "MinimumReplicasUnavailable"])
def test_ready_false_while_starting_is_progressing(lua51: Any, reason: str) -> None:
    status, msg = run(lua51, isvc(conditions=[cond("Ready", "False", reason, "1/2 pods ready")]))
    assert status == "Progressing"
    assert msg == f"{reason}: 1/2 pods ready"


@pytest.mark.parametrize("reason", sorted(FAILURE))
def test_failure_reasons_are_degraded(lua51: Any, reason: str) -> None:
    status, msg = run(lua51, isvc(conditions=[cond("Ready", "False", reason, "details")]))
    assert status == "Degraded"
    assert reason in msg and "details" in msg


def test_failure_on_a_detailed_condition_is_degraded_even_during_rollout(lua51: Any) -> None:
    obj = isvc(
        generation=7,
        observed=6,
        conditions=[
            cond("Ready", "False", "RollingOut"),
            cond("Scheduled", "False", "InsufficientGPU", "0/2 nodes have 4 free nvidia.com/gpu"),
        ],
    )
    status, msg = run(lua51, obj)
    assert status == "Degraded"
    assert msg.startswith("Scheduled is False, InsufficientGPU")


def test_unknown_failure_reason_is_degraded_not_hidden(lua51: Any) -> None:
    assert run(lua51, isvc(conditions=[cond("Ready", "False", "SomethingNew")]))[0] == "Degraded"


def test_scaled_to_zero_is_suspended(lua51: Any) -> None:
    obj = isvc(conditions=[cond("Ready", "False", "ScaledToZero", "spec.replicas is 0", gen=3)],
               spec={"model": {"uri": "/m"}, "replicas": 0})  # fmt: skip
    assert run(lua51, obj)[0] == "Suspended"


def test_autoscaler_failure_does_not_change_health(lua51: Any) -> None:
    obj = isvc(conditions=[cond("Ready", "True", "Serving", gen=3),
                           cond("AutoscalerReady", "False", "FailedGetPodsMetric", "no custom metrics API")])  # fmt: skip
    assert run(lua51, obj)[0] == "Healthy"


# ------------------------------------------------------------ statuses computed by the operator's code
def deployment(replicas: int, ready: int, available: bool, generation: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": "chat", "generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": ready, "availableReplicas": ready,
            "conditions": [{"type": "Available", "status": "True" if available else "False",
                            "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable"}],
        },
    }  # fmt: skip


def pod(name: str, scheduled: bool = True, message: str = "", waiting: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": "PodScheduled", "status": "True" if scheduled else "False",
                                              "reason": "" if scheduled else "Unschedulable", "message": message}]}  # fmt: skip
    if waiting:
        status["containerStatuses"] = [{"name": "runtime", "restartCount": 4, "state": {"waiting": {"reason": waiting}},
                                        "lastState": {"terminated": {"exitCode": 1, "message": "model not found"}}}]  # fmt: skip
    return {"metadata": {"name": name}, "status": status}


OPERATOR_CASES = {
    "serving": (st.Observed("chat", "ml", 3, deployment=deployment(2, 2, True), pods=[pod("a"), pod("b")],
                            replicas_wanted=2), "Healthy"),
    "starting": (st.Observed("chat", "ml", 3, deployment=deployment(2, 0, False), pods=[pod("a"), pod("b")],
                             replicas_wanted=2), "Progressing"),
    "no-deployment-yet": (st.Observed("chat", "ml", 3, replicas_wanted=1), "Progressing"),
    "no-gpu": (st.Observed("chat", "ml", 3, deployment=deployment(1, 0, False), replicas_wanted=1,
                           pods=[pod("a", False, "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")]),
               "Degraded"),
    "crash-loop": (st.Observed("chat", "ml", 3, deployment=deployment(1, 0, False), replicas_wanted=1,
                               pods=[pod("a", waiting="CrashLoopBackOff")]), "Degraded"),
    "invalid-spec": (st.Observed("chat", "ml", 3, problems=["autoscaling needs at least one target"]), "Degraded"),
    # A scale-up from 1 to 2 replicas whose new pod finds no GPU: still served (Ready=True).
    "scale-up-no-gpu": (st.Observed("chat", "ml", 3, deployment=deployment(2, 1, True), replicas_wanted=2,
                                    pods=[pod("a"), pod("b", False, "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")]),
                        "Healthy"),
    "scaled-to-zero": (st.Observed("chat", "ml", 3, deployment=deployment(0, 0, True), replicas_wanted=0),
                       "Suspended"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(OPERATOR_CASES))
def test_statuses_computed_by_the_operator(lua51: Any, case: str) -> None:
    """The script reads the status the operator really writes (infera_operator.status.compute_status)."""
    obs, expected = OPERATOR_CASES[case]
    status = st.compute_status(obs, None, "2026-01-01T00:00:00Z", url="http://chat.ml.svc.cluster.local/v1",
                               selector="app.kubernetes.io/name=infera-runtime,infera.dev/inferenceservice=chat")  # fmt: skip
    obj = isvc(generation=3, observed=3)
    obj["status"] = status
    health, message = run(lua51, obj)
    ready = st.condition(status, "Ready")
    assert ready is not None
    assert health == expected, (health, message, ready)
    if case == "scale-up-no-gpu":
        assert ready["status"] == "True" and "Scheduled is False, InsufficientGPU" in message


def test_argocd_cm_snippet_in_docs_is_the_script() -> None:
    """The docs' argocd-cm snippet embeds this exact script (indented), so copying it works."""
    doc = (CHART / "README.md").read_text()
    assert "resource.customizations.health.infera.dev_InferenceService: |" in doc
    indented = "\n".join(("    " + ln) if ln else "" for ln in SCRIPT.rstrip("\n").splitlines())
    assert indented in doc, "charts/infera/README.md's argocd-cm snippet differs from argocd/health.lua"
    assert REPO.joinpath("charts", "infera", "argocd", "health.lua").exists()
