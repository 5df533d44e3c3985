"""Pure status computation: conditions, reasons, transitions, the status patch."""

from __future__ import annotations

from typing import Any

from infera_operator import status as st

Obj = dict[str, Any]


def dep(
    replicas: int = 1, ready: int = 1, available: bool = True, generation: int = 1, observed: int = 1
) -> Obj:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": [
                {
                    "type": "Available",
                    "status": "True" if available else "False",
                    "reason": "MinimumReplicasAvailable",
                }
            ],
        },
    }


def pod(name: str = "p-1", scheduled: Obj | None = None, container: Obj | None = None) -> Obj:
    conds = [scheduled or {"type": "PodScheduled", "status": "True"}]
    status: Obj = {"conditions": conds}
    if container is not None:
        status["containerStatuses"] = [{"name": "runtime", **container}]
    return {"metadata": {"name": name}, "status": status}


def obs(**kw: Any) -> st.Observed:
    base: dict[str, Any] = {"name": "chat", "namespace": "ns", "generation": 2, "replicas_wanted": 1}
    base.update(kw)
    return st.Observed(**base)


def by_type(conds: list[st.Condition]) -> dict[str, st.Condition]:
    return {c.type: c for c in conds}


def test_serving_when_the_rollout_is_complete() -> None:
    c = by_type(st.compute_conditions(obs(deployment=dep(), pods=[pod()])))
    assert c["Ready"].status == "True" and c["Ready"].reason == "Serving"
    assert c["Scheduled"].true and c["DeploymentAvailable"].true and c["ConfigReady"].true
    assert c["AutoscalerReady"].reason == "AutoscalingDisabled"


def test_insufficient_gpu_carries_the_scheduler_message() -> None:
    msg = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    p = pod(scheduled={"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg})
    c = by_type(st.compute_conditions(obs(deployment=dep(ready=0, available=False), pods=[p])))
    assert c["Scheduled"].reason == "InsufficientGPU"
    assert c["Ready"].status == "False" and c["Ready"].reason == "InsufficientGPU"
    assert msg in c["Ready"].message


def test_crash_loop_reports_the_last_error_line() -> None:
    p = pod(
        container={
            "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {
                "terminated": {"exitCode": 1, "message": "loading /m\nTraceback ...\nmodel /m not found\n"}
            },
        }
    )
    c = by_type(st.compute_conditions(obs(deployment=dep(ready=0, available=False), pods=[p])))
    assert c["Ready"].reason == "CrashLoopBackOff"
    assert c["Ready"].message.endswith("last termination: model /m not found")
    assert "4 restarts" in c["Ready"].message


def test_image_pull_backoff() -> None:
    p = pod(container={"state": {"waiting": {"reason": "ImagePullBackOff", "message": "pull access denied"}}})
    c = by_type(st.compute_conditions(obs(deployment=dep(ready=0, available=False), pods=[p])))
    assert (c["Ready"].reason, c["DeploymentAvailable"].reason) == ("ImagePullBackOff", "ImagePullBackOff")
    assert "pull access denied" in c["Ready"].message


def test_invalid_spec_makes_everything_else_unknown() -> None:
    c = by_type(st.compute_conditions(obs(problems=["engine.extraArgs must not set dtype"])))
    assert c["Ready"].reason == "InvalidSpec" and c["Ready"].status == "False"
    assert c["ConfigReady"].reason == "InvalidSpec"
    assert c["Scheduled"].status == "Unknown"


def test_rolling_out_while_the_deployment_lags_its_generation() -> None:
    c = by_type(st.compute_conditions(obs(deployment=dep(generation=2, observed=1), pods=[pod()])))
    assert c["Ready"].status == "False" and c["Ready"].reason == "RollingOut"


def test_a_scale_up_keeps_ready_while_the_new_pods_start() -> None:
    """kubectl scale or the HPA adding pods must not flip Ready: the current model still serves."""
    d = dep(replicas=2, ready=1)
    c = by_type(st.compute_conditions(obs(deployment=d, pods=[pod(), pod("p-2")], replicas_wanted=2)))
    assert c["Ready"].status == "True" and c["Ready"].reason == "Serving"
    assert "1 of 2 replicas ready" in c["Ready"].message


def test_a_template_change_is_rolling_out_until_no_old_pod_is_left() -> None:
    d = dep(replicas=1, ready=1)
    d["status"].update(replicas=2, updatedReplicas=1, availableReplicas=1)
    c = by_type(st.compute_conditions(obs(deployment=d, pods=[pod(), pod("p-2")])))
    assert c["Ready"].status == "False" and c["Ready"].reason == "RollingOut"


def test_scaled_to_zero_is_not_ready() -> None:
    c = by_type(st.compute_conditions(obs(deployment=dep(replicas=0, ready=0), replicas_wanted=0)))
    assert c["Ready"].reason == "ScaledToZero"
    assert c["Scheduled"].true


def test_autoscaler_reports_hpa_trouble() -> None:
    hpa = {
        "status": {
            "conditions": [
                {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale"},
                {
                    "type": "ScalingActive",
                    "status": "False",
                    "reason": "FailedGetPodsMetric",
                    "message": "no API",
                },
            ]
        }
    }
    c = by_type(st.compute_conditions(obs(deployment=dep(), pods=[pod()], autoscaling=True, hpa=hpa)))
    assert c["AutoscalerReady"].reason == "FailedGetPodsMetric"
    assert c["Ready"].true  # informational: does not gate Ready


def test_transition_time_only_moves_when_the_status_flips() -> None:
    first = st.compute_status(obs(deployment=dep(), pods=[pod()]), None, "T1", "u", "s")
    again = st.compute_status(obs(deployment=dep(), pods=[pod()]), first, "T2", "u", "s")
    assert again == first
    assert st.status_patch(first, again) is None
    broken = st.compute_status(
        obs(deployment=dep(ready=0, available=False), pods=[pod()]), first, "T3", "u", "s"
    )
    ready = st.condition(broken, "Ready")
    assert ready is not None and ready["lastTransitionTime"] == "T3"
    config = st.condition(broken, "ConfigReady")
    assert config is not None and config["lastTransitionTime"] == "T1"
    patch = st.status_patch(first, broken)
    assert patch is not None and set(patch["status"]) == {"readyReplicas", "conditions"}


def test_status_block_and_patch_never_touch_throughput() -> None:
    s = st.compute_status(obs(deployment=dep(), pods=[pod()]), {"throughput": {"pods": 1}}, "T", "url", "sel")
    assert "throughput" not in s
    assert s["observedGeneration"] == 2 and s["url"] == "url" and s["selector"] == "sel"
    assert all(c["observedGeneration"] == 2 for c in s["conditions"])


def test_transition_events() -> None:
    ok = st.compute_status(obs(deployment=dep(), pods=[pod()]), None, "T", "u", "s")
    events = st.transition_events(None, ok)
    assert ("Normal", "Ready", "1 ready replicas serve the model") in events
    assert st.transition_events(ok, ok) == []
    msg = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    p = pod(scheduled={"type": "PodScheduled", "status": "False", "message": msg})
    bad = st.compute_status(obs(deployment=dep(ready=0, available=False), pods=[p]), ok, "T", "u", "s")
    events = st.transition_events(ok, bad)
    assert events[0][:2] == ("Warning", "InsufficientGPU")
    assert len([e for e in events if e[1] == "InsufficientGPU"]) == 1
