"""kopf handlers: thin bindings from kopf's events to the :class:`~infera_operator.controller.Controller`.

* ``configure`` (startup): kopf's settings in one place, the controller, the periodic timer.
* ``reconcile_handler`` (create / update / resume of an InferenceService): reconcile it.
* ``track`` (every InferenceService watch event): the set of known objects, and cleanup on deletion.
* ``child_changed`` (events of the Deployments, ReplicaSets' pods, Services, ConfigMaps and HPAs the
  operator manages): reconcile the owner, so a deleted child is recreated, an edited one repaired,
  and pod or rollout progress reaches the status.

Storage: kopf keeps its handler progress and the "last handled" essence of each object in memory
(``MemoryProgressStorage``, ``MemoryDiffBaseStorage``), so it never writes to an InferenceService:
no ``kopf.zalando.org/*`` annotations, no ``status.kopf``. The reconcile is level-based and never
raises to kopf (it retries by itself), so there is no multi-step progress worth persisting; after an
operator restart every object is simply reconciled again. No handler needs a finalizer (no
``@kopf.on.delete``, no per-object timers or daemons): children go with their owner through the
garbage collector.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import kopf

from infera_operator.constants import GROUP, LABEL_ISVC, LABEL_MANAGED_BY, MANAGED_BY, PLURAL, VERSION
from infera_operator.controller import Controller
from infera_operator.kube import RestKube
from infera_operator.options import OperatorOptions

log = logging.getLogger(__name__)

MANAGED = {LABEL_MANAGED_BY: MANAGED_BY}


class MemoryProgressStorage(kopf.ProgressStorage):
    """Handler progress kept in this process only (nothing is written to the objects)."""

    def __init__(self) -> None:
        super().__init__()
        self._records: dict[tuple[str, str], kopf.ProgressRecord] = {}

    @staticmethod
    def _uid(body: kopf.Body) -> str:
        return str(body.metadata.uid or f"{body.metadata.namespace}/{body.metadata.name}")

    def fetch(self, *, key: kopf.HandlerId, body: kopf.Body) -> kopf.ProgressRecord | None:
        record = self._records.get((self._uid(body), key))
        return copy.deepcopy(record) if record is not None else None

    def store(
        self, *, key: kopf.HandlerId, record: kopf.ProgressRecord, body: kopf.Body, patch: kopf.Patch
    ) -> None:
        self._records[(self._uid(body), key)] = copy.deepcopy(record)

    def purge(self, *, key: kopf.HandlerId, body: kopf.Body, patch: kopf.Patch) -> None:
        self._records.pop((self._uid(body), key), None)

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        pass

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return super().clear(essence=essence)

    def forget(self, uid: str) -> None:
        for k in [k for k in self._records if k[0] == uid]:
            del self._records[k]


class MemoryDiffBaseStorage(kopf.DiffBaseStorage):
    """The last handled essence of each object, kept in this process only."""

    def __init__(self) -> None:
        super().__init__()
        self._essences: dict[str, kopf.BodyEssence] = {}

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        essence = self._essences.get(str(body.metadata.uid))
        return copy.deepcopy(essence) if essence is not None else None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        self._essences[str(body.metadata.uid)] = copy.deepcopy(essence)

    def forget(self, uid: str) -> None:
        self._essences.pop(uid, None)


def _controller(memo: kopf.Memo) -> Controller:
    ctl = memo.get("controller")
    if not isinstance(ctl, Controller):
        raise RuntimeError("the infera controller is not configured (the startup handler did not run)")
    return ctl


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """All of kopf's settings, the controller and the timer."""
    progress, diffbase = MemoryProgressStorage(), MemoryDiffBaseStorage()
    settings.persistence.progress_storage = progress
    settings.persistence.diffbase_storage = diffbase
    settings.posting.loggers = False  # the operator posts its own Events, on transitions only
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.reconnect_backoff = 1.0
    settings.execution.max_workers = 8
    options = memo.get("options")
    if not isinstance(options, OperatorOptions):
        options = OperatorOptions.from_env()
        memo["options"] = options
    kube = memo.get("kube") or RestKube.from_environment()
    ctl = Controller(kube=kube, options=options)
    ctl.pods = {}  # fed by pod_changed (the pod watch below) and refreshed by the timer
    memo["controller"] = ctl
    memo["storages"] = (progress, diffbase)
    memo["timer"] = asyncio.get_running_loop().create_task(ctl.run_timer(), name="infera-timer")
    log.info(
        "infera operator configured: runtime image %s, throughput from %s every %.0fs (window %.0fs)",
        options.runtime_image,
        options.prometheus_url or "pod scrapes",
        options.metrics_interval_s,
        options.metrics_window_s,
    )


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    timer = memo.get("timer")
    if isinstance(timer, asyncio.Task):
        timer.cancel()
    ctl = memo.get("controller")
    if isinstance(ctl, Controller):
        await ctl.close()


@kopf.on.probe(id="inferenceServices")
def probe_known(memo: kopf.Memo, **_: Any) -> int:
    """Liveness detail: how many InferenceServices this operator tracks."""
    ctl = memo.get("controller")
    return len(ctl.known) if isinstance(ctl, Controller) else 0


@kopf.on.probe(id="reconciles")
def probe_reconciles(memo: kopf.Memo, **_: Any) -> int:
    """Liveness detail: reconciles run since start (with or without writes)."""
    ctl = memo.get("controller")
    return ctl.reconciles if isinstance(ctl, Controller) else 0


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def reconcile_handler(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    if namespace:
        await _controller(memo).reconcile_key(namespace, name)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def track(type: str, namespace: str | None, name: str, uid: str, memo: Any, **_: Any) -> None:
    if not namespace:
        return
    ctl = _controller(memo)
    if type == "DELETED":
        ctl.forget(namespace, name)
        storages = memo.get("storages") or ()
        for storage in storages:
            storage.forget(uid)
    else:
        ctl.known.add((namespace, name))


def _owner_changed(labels: kopf.Labels, namespace: str | None, memo: kopf.Memo) -> None:
    owner = labels.get(LABEL_ISVC)
    if owner and namespace:
        _controller(memo).trigger(namespace, owner)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
async def deployment_changed(labels: kopf.Labels, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    _owner_changed(labels, namespace, memo)


@kopf.on.event("", "v1", "services", labels=MANAGED)
async def service_changed(labels: kopf.Labels, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    _owner_changed(labels, namespace, memo)


@kopf.on.event("", "v1", "configmaps", labels=MANAGED)
async def configmap_changed(labels: kopf.Labels, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    _owner_changed(labels, namespace, memo)


@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", labels=MANAGED)
async def hpa_changed(labels: kopf.Labels, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    _owner_changed(labels, namespace, memo)


@kopf.on.event("", "v1", "pods", labels=MANAGED)
async def pod_changed(
    type: str | None, body: kopf.Body, labels: kopf.Labels, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    _controller(memo).observe_pod(type, dict(body))
    _owner_changed(labels, namespace, memo)
