"""The reconcile loop against an in-memory API (fakekube.py); the real one is in tests/integration."""

from __future__ import annotations

from typing import Any

import pytest
from fakekube import FakeKube

from infera_operator.constants import FIELD_MANAGER, HANDOVER_FIELD_MANAGER
from infera_operator.kube import KubeError
from infera_operator.reconcile import manager_owns, needs_apply, reconcile

Obj = dict[str, Any]
NS = "team"


def make_cr(kube: FakeKube, spec: Obj | None = None, name: str = "chat") -> Obj:
    obj: Obj = kube.put(
        {
            "apiVersion": "infera.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"model": {"uri": "/models/tiny"}, "resources": {"gpus": 1}, **(spec or {})},
        }
    )
    return obj


def set_spec(kube: FakeKube, name: str, **changes: Any) -> None:
    cr = kube.objects[("InferenceService", NS, name)]
    for k, v in changes.items():
        if v is None:
            cr["spec"].pop(k, None)
        else:
            cr["spec"][k] = v
    cr["metadata"]["generation"] += 1


def deployment_running(kube: FakeKube, name: str = "chat", ready: int | None = None) -> None:
    """Play the Deployment controller and the kubelet: all pods of the current template ready."""
    d = kube.objects[("Deployment", NS, name)]
    n = int(d["spec"].get("replicas", 1))
    ready = n if ready is None else ready
    d["status"] = {
        "observedGeneration": d["metadata"]["generation"],
        "replicas": n,
        "updatedReplicas": n,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "conditions": [{"type": "Available", "status": "True" if ready == n else "False"}],
    }
    labels = d["spec"]["template"]["metadata"]["labels"]
    for i in range(n):
        kube.put(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"{name}-{i}", "namespace": NS, "labels": labels},
                "status": {
                    "podIP": f"10.0.0.{i + 1}",
                    "conditions": [
                        {"type": "PodScheduled", "status": "True"},
                        {"type": "Ready", "status": "True" if i < ready else "False"},
                    ],
                },
            }
        )


def status(kube: FakeKube, name: str = "chat") -> Obj:
    s: Obj = kube.objects[("InferenceService", NS, name)].get("status", {})
    return s


def ready(kube: FakeKube, name: str = "chat") -> Obj:
    return next(c for c in status(kube, name)["conditions"] if c["type"] == "Ready")


def test_first_reconcile_creates_children_then_a_second_one_writes_nothing() -> None:
    kube = FakeKube()
    make_cr(kube)
    r = reconcile(kube, NS, "chat", now="T1")
    assert r.applied == ["ConfigMap", "Deployment", "Service"]
    assert r.status_written
    assert ("Deployment", NS, "chat") in kube.objects and ("ConfigMap", NS, "chat-config") in kube.objects
    assert ("HorizontalPodAutoscaler", NS, "chat") not in kube.objects
    assert ready(kube)["status"] == "False"

    deployment_running(kube)
    r = reconcile(kube, NS, "chat", now="T2")
    assert r.ready and r.applied == [] and r.status_written
    assert ready(kube) | {"lastTransitionTime": ""} == {
        "type": "Ready",
        "status": "True",
        "reason": "Serving",
        "message": "1 ready replicas serve the model",
        "lastTransitionTime": "",
        "observedGeneration": 1,
    }
    assert status(kube)["url"] == "http://chat.team.svc.cluster.local/v1"
    assert (
        status(kube)["selector"] == "app.kubernetes.io/name=infera-runtime,infera.dev/inferenceservice=chat"
    )
    assert [e[1] for e in r.events] == ["Ready"]

    before = kube.writes.total
    r = reconcile(kube, NS, "chat", now="T3")
    assert kube.writes.total == before, kube.writes.counts
    assert not r.wrote and r.ready


def test_a_changed_spec_rolls_the_pods_through_the_config_hash() -> None:
    kube = FakeKube()
    make_cr(kube)
    reconcile(kube, NS, "chat")
    deployment_running(kube)
    reconcile(kube, NS, "chat")
    old = kube.objects[("Deployment", NS, "chat")]["spec"]["template"]["metadata"]["annotations"]
    set_spec(kube, "chat", engine={"maxModelLen": 1024})
    r = reconcile(kube, NS, "chat")
    assert r.applied == ["ConfigMap", "Deployment"]
    new = kube.objects[("Deployment", NS, "chat")]["spec"]["template"]["metadata"]["annotations"]
    assert new["infera.dev/config-hash"] != old["infera.dev/config-hash"]
    assert ready(kube)["reason"] == "RollingOut"
    assert ready(kube)["observedGeneration"] == 2


def test_deleted_and_edited_children_are_restored() -> None:
    kube = FakeKube()
    make_cr(kube)
    reconcile(kube, NS, "chat")
    kube.delete("Service", NS, "chat")
    dep = kube.objects[("Deployment", NS, "chat")]
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"
    r = reconcile(kube, NS, "chat")
    assert sorted(r.applied) == ["Deployment", "Service"]
    assert (
        kube.objects[("Deployment", NS, "chat")]["spec"]["template"]["spec"]["containers"][0]["image"]
        != "evil:1"
    )


def test_autoscaling_on_hands_replicas_over_and_off_deletes_the_hpa() -> None:
    kube = FakeKube()
    make_cr(kube, {"replicas": 3})
    reconcile(kube, NS, "chat")
    deployment_running(kube)
    reconcile(kube, NS, "chat")
    live = kube.objects[("Deployment", NS, "chat")]
    assert manager_owns(live, FIELD_MANAGER, "spec", "replicas")

    set_spec(kube, "chat", autoscaling={"minReplicas": 1, "maxReplicas": 5, "targetInFlightRequests": 4})
    r = reconcile(kube, NS, "chat")
    assert "HorizontalPodAutoscaler" in r.applied
    live = kube.objects[("Deployment", NS, "chat")]
    assert live["spec"]["replicas"] == 3, "dropping replicas from the apply must not reset them"
    assert not manager_owns(live, FIELD_MANAGER, "spec", "replicas")
    assert manager_owns(live, HANDOVER_FIELD_MANAGER, "spec", "replicas")
    assert kube.writes.counts["apply Deployment"] == 3  # create, hand-over, apply without replicas

    set_spec(kube, "chat", autoscaling=None, replicas=2)
    r = reconcile(kube, NS, "chat")
    assert r.deleted == ["HorizontalPodAutoscaler"]
    assert ("HorizontalPodAutoscaler", NS, "chat") not in kube.objects
    assert kube.objects[("Deployment", NS, "chat")]["spec"]["replicas"] == 2


def test_a_foreign_hpa_of_the_same_name_is_left_alone() -> None:
    kube = FakeKube()
    make_cr(kube)
    kube.put(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "chat", "namespace": NS},
        }
    )
    r = reconcile(kube, NS, "chat")
    assert r.deleted == []
    assert ("HorizontalPodAutoscaler", NS, "chat") in kube.objects


def test_invalid_spec_reports_and_leaves_the_children_alone() -> None:
    kube = FakeKube()
    make_cr(kube)
    reconcile(kube, NS, "chat")
    before = kube.get("Deployment", NS, "chat")
    set_spec(kube, "chat", engine={"extraArgs": {"tensor_parallel_size": 2}})
    r = reconcile(kube, NS, "chat")
    assert r.applied == []
    assert kube.get("Deployment", NS, "chat") == before
    assert ready(kube)["reason"] == "InvalidSpec"
    assert "tensor_parallel_size" in ready(kube)["message"]
    assert ("Warning", "InvalidSpec") in [e[:2] for e in r.events]


def test_apply_errors_are_reported_and_returned_for_a_retry() -> None:
    kube = FakeKube()
    make_cr(kube)
    kube.fail_apply["Deployment"] = KubeError(422, "Invalid", "spec.template.spec.affinity: Invalid value")
    r = reconcile(kube, NS, "chat")
    assert r.errors and "ConfigMap" in r.applied and "Service" in r.applied
    assert ready(kube)["reason"] == "ApplyFailed"
    assert "affinity" in ready(kube)["message"]


def test_missing_or_deleting_cr_does_nothing() -> None:
    kube = FakeKube()
    assert not reconcile(kube, NS, "nope").found
    cr = make_cr(kube)
    kube.objects[("InferenceService", NS, "chat")]["metadata"]["deletionTimestamp"] = "now"
    r = reconcile(kube, NS, cr["metadata"]["name"])
    assert r.found and not r.wrote and kube.writes.total == 0


@pytest.mark.parametrize("edit", ["hash", "field"])
def test_needs_apply_sees_spec_changes_and_drift(edit: str) -> None:
    desired: Obj = {"metadata": {"annotations": {"infera.dev/desired-hash": "h1"}}, "spec": {"a": 1}}
    live: Obj = {"metadata": {"annotations": {"infera.dev/desired-hash": "h1"}}, "spec": {"a": 1, "b": 2}}
    assert needs_apply(desired, live) == []
    assert needs_apply(desired, None) == ["missing"]
    if edit == "hash":
        live["metadata"]["annotations"]["infera.dev/desired-hash"] = "h0"
        assert needs_apply(desired, live) == ["spec changed"]
    else:
        live["spec"]["a"] = 5
        assert needs_apply(desired, live) == [".spec.a"]
