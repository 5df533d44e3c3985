"""The controller's scheduling and throughput writes, with an in-memory API and metrics source."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from fakekube import FakeKube
from test_reconcile import NS, deployment_running, make_cr

from infera_operator import throughput as tp
from infera_operator.collector import PodTarget
from infera_operator.controller import Controller, pod_ready, pod_target
from infera_operator.options import OperatorOptions


class FixedSource:
    """Rates per pod as the test sets them (the real sources are tested in test_throughput.py)."""

    def __init__(self) -> None:
        self.tokens_per_pod = 100.0
        self.asked: list[list[str]] = []
        self.forgotten: list[str] = []

    async def rates(self, key: str, pods: Sequence[PodTarget]) -> dict[str, tp.PodRates]:
        self.asked.append([f"{p.ip}:{p.port}" for p in pods])
        return {
            p.name: tp.PodRates(self.tokens_per_pod, 2.0, 3.0, 0.5, ((0.1, 5.0), (float("inf"), 10.0)))
            for p in pods
        }

    def forget(self, key: str) -> None:
        self.forgotten.append(key)


def controller(kube: FakeKube, **opts: Any) -> tuple[Controller, FixedSource]:
    source = FixedSource()
    options = OperatorOptions(status_min_interval_s=0.0001, **opts)
    return Controller(kube=kube, options=options, source=source), source


def throughput(kube: FakeKube) -> Any:
    return kube.objects[("InferenceService", NS, "chat")].get("status", {}).get("throughput")


async def test_throughput_is_written_on_change_only() -> None:
    kube = FakeKube()
    make_cr(kube, {"replicas": 2})
    ctl, source = controller(kube)
    await ctl.reconcile_key(NS, "chat")
    deployment_running(kube)
    assert await ctl.measure(NS, "chat")
    assert source.asked == [["10.0.0.1:8000", "10.0.0.2:8000"]]
    t = throughput(kube)
    assert t["generationTokensPerSecond"] == 200.0 and t["pods"] == 2 and t["inFlightRequests"] == 6
    writes = kube.writes.total
    assert not await ctl.measure(NS, "chat"), "same values: no write"
    assert kube.writes.total == writes
    source.tokens_per_pod = 300.0
    assert await ctl.measure(NS, "chat")
    assert throughput(kube)["generationTokensPerSecond"] == 600.0


async def test_no_ready_pod_reads_zero_and_nothing_is_written_when_there_never_was_a_value() -> None:
    kube = FakeKube()
    make_cr(kube)
    ctl, _ = controller(kube)
    await ctl.reconcile_key(NS, "chat")
    assert not await ctl.measure(NS, "chat")
    assert throughput(kube) is None
    deployment_running(kube)
    assert await ctl.measure(NS, "chat")
    for key in [k for k in kube.objects if k[0] == "Pod"]:
        del kube.objects[key]
    assert await ctl.measure(NS, "chat")
    assert throughput(kube)["pods"] == 0 and throughput(kube)["generationTokensPerSecond"] == 0.0


async def test_triggers_coalesce_into_one_reconcile() -> None:
    kube = FakeKube()
    make_cr(kube)
    ctl, _ = controller(kube)
    for _ in range(20):
        ctl.trigger(NS, "chat", delay=0.05)
    await asyncio.sleep(0.3)
    assert ctl.reconciles == 1
    assert (NS, "chat") in ctl.known
    await ctl.close()


async def test_a_deleted_object_is_forgotten() -> None:
    kube = FakeKube()
    ctl, source = controller(kube)
    ctl.known.add((NS, "gone"))
    result = await ctl.reconcile_key(NS, "gone")
    assert result is not None and not result.found
    assert (NS, "gone") not in ctl.known
    assert source.forgotten == [f"{NS}/gone"]


def test_pod_readiness_and_port() -> None:
    pod = {
        "metadata": {"name": "p"},
        "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 9000}]}]},
        "status": {"podIP": "10.1.1.1", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    assert pod_ready(pod)
    assert pod_target(pod) == PodTarget("p", "10.1.1.1", 9000)
    assert not pod_ready({**pod, "metadata": {"name": "p", "deletionTimestamp": "x"}})
    assert not pod_ready(
        {**pod, "status": {"conditions": [{"type": "Ready", "status": "False"}], "podIP": "1"}}
    )


async def test_pods_to_measure_come_from_the_watch_not_a_list_per_object() -> None:
    """At scale a LIST per InferenceService per interval floods the API server: with a pod watch
    feeding the cache, measuring lists nothing; the resync refresh is one LIST per namespace."""
    kube = FakeKube()
    make_cr(kube, {"replicas": 2})
    ctl, source = controller(kube)
    ctl.pods = {}
    await ctl.reconcile_key(NS, "chat")
    deployment_running(kube)
    pods = [o for (k, _, _), o in sorted(kube.objects.items()) if k == "Pod"]
    lists: list[str] = []
    real_list = kube.list

    def counting_list(kind: str, namespace: str | None, label_selector: str = "") -> list[Any]:
        lists.append(kind)
        return list(real_list(kind, namespace, label_selector))

    kube.list = counting_list
    ctl.observe_pod(None, pods[0])
    assert await ctl.measure(NS, "chat")
    assert source.asked[-1] == ["10.0.0.1:8000"] and lists == []
    ctl.observe_pod("ADDED", pods[1])
    await ctl.measure(NS, "chat")
    assert source.asked[-1] == ["10.0.0.1:8000", "10.0.0.2:8000"]
    ctl.observe_pod("DELETED", pods[0])
    await ctl.measure(NS, "chat")
    assert source.asked[-1] == ["10.0.0.2:8000"] and lists == []
    ctl.refresh_pods()  # a missed event is repaired by the resync's one LIST per namespace
    assert lists == ["Pod"]
    await ctl.measure(NS, "chat")
    assert source.asked[-1] == ["10.0.0.1:8000", "10.0.0.2:8000"]
