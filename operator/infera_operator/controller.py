"""The asynchronous side of the operator: who reconciles what, when, and the periodic timer.

kopf's handlers (``handlers.py``) only hand work to one :class:`Controller`:

* ``reconcile_key()`` runs :func:`~infera_operator.reconcile.reconcile` for one InferenceService in a
  worker thread, one at a time per object (a lock per key), and retries failures with backoff.
* ``trigger()`` asks for a reconcile soon; triggers that arrive while one is pending coalesce (a child
  or pod event storm makes one reconcile, not hundreds).
* ``run_timer()`` is the one periodic timer of the process: every ``metrics_interval_s`` it measures the
  throughput of every known InferenceService and writes ``status.throughput`` when the
  :class:`~infera_operator.collector.WritePolicy` says so; every ``resync_interval_s`` it triggers a
  reconcile of each (a safety net for missed events). It is process-wide rather than a kopf per-object
  ``@kopf.timer`` because kopf puts a finalizer on every object that has timers or daemons, and
  InferenceServices must carry no finalizer.

Which pods to measure comes from the pod watch kopf already runs (``observe_pod()``), not from a
LIST per InferenceService per interval: at 500 InferenceServices that would be ~33 LISTs a second.
The cache is refreshed with one LIST per namespace at each resync, in case a watch event was missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from infera_operator import render
from infera_operator.collector import (
    MetricsSource,
    PodTarget,
    PrometheusSource,
    ScrapeSource,
    ThroughputCollector,
    WritePolicy,
)
from infera_operator.constants import (
    KIND,
    LABEL_ISVC,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    PORT_NAME,
    RUNTIME_PORT,
)
from infera_operator.kube import Kube, KubeError
from infera_operator.options import OperatorOptions
from infera_operator.reconcile import ReconcileResult, reconcile

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)

RETRY_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
TRIGGER_DELAY_S = 0.2


def pod_ready(pod: Obj) -> bool:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or not status.get("podIP"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def pod_target(pod: Obj) -> PodTarget:
    port = RUNTIME_PORT
    for container in (pod.get("spec") or {}).get("containers") or []:
        for p in container.get("ports") or []:
            if p.get("name") == PORT_NAME and p.get("containerPort"):
                port = int(p["containerPort"])
    return PodTarget(name=str(pod["metadata"]["name"]), ip=str(pod["status"]["podIP"]), port=port)


def metrics_source(options: OperatorOptions) -> MetricsSource:
    if options.prometheus_url:
        return PrometheusSource(options.prometheus_url, window_s=options.metrics_window_s)
    return ScrapeSource(window_s=options.metrics_window_s)


@dataclass
class _ThroughputState:
    last: dict[str, object] | None = None
    last_write_t: float | None = None


@dataclass
class Controller:
    kube: Kube
    options: OperatorOptions = field(default_factory=OperatorOptions)
    source: MetricsSource | None = None

    def __post_init__(self) -> None:
        self.cfg = render.OperatorConfig(runtime_image=self.options.runtime_image)
        self.source = self.source or metrics_source(self.options)
        self.collector = ThroughputCollector(self.source)
        self.policy = WritePolicy(
            min_interval_s=self.options.status_min_interval_s,
            max_interval_s=self.options.status_max_interval_s,
        )
        self.known: set[Key] = set()
        self.reconciles = 0
        self._locks: dict[Key, asyncio.Lock] = {}
        self._dirty: set[Key] = set()
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._failures: dict[Key, int] = {}
        self._retry_handles: dict[Key, asyncio.TimerHandle] = {}
        self._throughput: dict[Key, _ThroughputState] = {}
        # Runtime pods by owner, fed by the pod watch (handlers.configure sets it to {}); None means
        # no watch feeds it and measure() lists pods itself (tests that drive a Controller alone).
        self.pods: dict[Key, dict[str, Obj]] | None = None

    # ------------------------------------------------------------------ pods
    def observe_pod(self, event_type: str | None, pod: Obj) -> None:
        """A pod watch event (kopf's initial listing has type None)."""
        meta = pod.get("metadata") or {}
        owner, namespace, name = (
            (meta.get("labels") or {}).get(LABEL_ISVC),
            meta.get("namespace"),
            meta.get("name"),
        )
        if self.pods is None or not (owner and namespace and name):
            return
        key = (str(namespace), str(owner))
        if event_type == "DELETED":
            by_name = self.pods.get(key)
            if by_name is not None:
                by_name.pop(str(name), None)
                if not by_name:
                    del self.pods[key]
        else:
            self.pods.setdefault(key, {})[str(name)] = pod

    def refresh_pods(self) -> None:
        """Rebuild the pod cache with one LIST per namespace of known InferenceServices."""
        if self.pods is None:
            return
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        fresh: dict[Key, dict[str, Obj]] = {}
        for namespace in sorted({ns for ns, _ in self.known}):
            for pod in self.kube.list("Pod", namespace, selector):
                meta = pod.get("metadata") or {}
                owner = (meta.get("labels") or {}).get(LABEL_ISVC)
                if owner:
                    fresh.setdefault((namespace, str(owner)), {})[str(meta.get("name"))] = pod
            for key in [k for k in self.pods if k[0] == namespace]:
                del self.pods[key]
        self.pods.update(fresh)

    async def pods_of(self, namespace: str, name: str) -> list[Obj]:
        if self.pods is not None:
            return list(self.pods.get((namespace, name), {}).values())
        return await asyncio.to_thread(self.kube.list, "Pod", namespace, render.selector_string(name))

    # ------------------------------------------------------------------ reconcile
    async def reconcile_key(self, namespace: str, name: str) -> ReconcileResult | None:
        """Reconcile now (serialised per object); failures are logged and retried with backoff."""
        key = (namespace, name)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            self.reconciles += 1
            try:
                result = await asyncio.to_thread(reconcile, self.kube, namespace, name, self.cfg)
            except Exception as e:
                log.exception("%s/%s: reconcile failed: %s", namespace, name, e)
                self._schedule_retry(key)
                return None
        if not result.found:
            self.forget(namespace, name)
            return result
        self.known.add(key)
        if result.errors:
            self._schedule_retry(key)
        else:
            self._failures.pop(key, None)
        if result.wrote:
            log.info(
                "%s/%s reconciled: applied=%s deleted=%s status=%s events=%s ready=%s",
                namespace,
                name,
                ",".join(result.applied) or "-",
                ",".join(result.deleted) or "-",
                "written" if result.status_written else "unchanged",
                ",".join(r for _, r, _ in result.events) or "-",
                result.ready,
            )
        return result

    def _schedule_retry(self, key: Key) -> None:
        n = self._failures.get(key, 0)
        self._failures[key] = n + 1
        delay = RETRY_BACKOFF_S[min(n, len(RETRY_BACKOFF_S) - 1)]
        old = self._retry_handles.pop(key, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._retry_handles[key] = loop.call_later(delay, self.trigger, key[0], key[1], 0.0)
        log.info("%s/%s: retrying in %.0fs", key[0], key[1], delay)

    def trigger(self, namespace: str, name: str, delay: float = TRIGGER_DELAY_S) -> None:
        """Reconcile soon; coalesces with a pending trigger of the same object."""
        key = (namespace, name)
        self._dirty.add(key)
        task = self._tasks.get(key)
        if task is None or task.done():
            self._tasks[key] = asyncio.get_running_loop().create_task(self._drain(key, delay))

    async def _drain(self, key: Key, delay: float) -> None:
        await asyncio.sleep(delay)
        while key in self._dirty:
            self._dirty.discard(key)
            await self.reconcile_key(*key)

    def forget(self, namespace: str, name: str) -> None:
        """The InferenceService is gone: drop every piece of state kept for it."""
        key = (namespace, name)
        self.known.discard(key)
        self._dirty.discard(key)
        self._failures.pop(key, None)
        self._throughput.pop(key, None)
        handle = self._retry_handles.pop(key, None)
        if handle is not None:
            handle.cancel()
        self.collector.forget(f"{namespace}/{name}")

    # ------------------------------------------------------------------ throughput
    async def measure(self, namespace: str, name: str) -> bool:
        """Measure one InferenceService's throughput; patch status.throughput if worth it.
        Returns whether it wrote."""
        key = (namespace, name)
        pods = await self.pods_of(namespace, name)
        targets: Sequence[PodTarget] = [pod_target(p) for p in pods if pod_ready(p)]
        block = await self.collector.collect(f"{namespace}/{name}", targets)
        if block is None:
            return False
        state = self._throughput.setdefault(key, _ThroughputState())
        if state.last is None and not targets:
            # Nothing measured yet and nothing to measure: only write zero over an old value.
            cr = await asyncio.to_thread(self.kube.get, KIND, namespace, name)
            if cr is None or not (cr.get("status") or {}).get("throughput"):
                return False
        now = time.monotonic()
        if not self.policy.should_write(state.last, state.last_write_t, block, now):
            return False
        try:
            await asyncio.to_thread(
                self.kube.patch_merge, KIND, namespace, name, {"status": {"throughput": block}}, "status"
            )
        except KubeError as e:
            if e.not_found:
                self.forget(namespace, name)
                return False
            raise
        state.last, state.last_write_t = dict(block), now
        log.debug("%s/%s: throughput %s", namespace, name, block)
        return True

    async def measure_all(self) -> None:
        keys = sorted(self.known)
        results = await asyncio.gather(*(self.measure(ns, n) for ns, n in keys), return_exceptions=True)
        for (ns, n), r in zip(keys, results, strict=True):
            if isinstance(r, BaseException):
                log.warning("%s/%s: measuring throughput failed: %s", ns, n, r)

    async def run_timer(self) -> None:
        """The operator's periodic timer (see the module doc); runs until cancelled."""
        interval = self.options.metrics_interval_s
        next_resync = time.monotonic() + self.options.resync_interval_s
        first = True
        while True:
            await asyncio.sleep(interval)
            if first:  # the pod watch only reports changes from here on: start from a full picture
                first = False
                try:
                    await asyncio.to_thread(self.refresh_pods)
                except Exception as e:
                    log.warning("listing runtime pods failed: %s", e)
            try:
                await self.measure_all()
            except Exception:
                log.exception("throughput timer failed")
            if time.monotonic() >= next_resync:
                next_resync = time.monotonic() + self.options.resync_interval_s
                try:
                    await asyncio.to_thread(self.refresh_pods)
                except Exception as e:
                    log.warning("refreshing the pod cache failed: %s", e)
                for ns, n in sorted(self.known):
                    self.trigger(ns, n)

    async def close(self) -> None:
        for handle in self._retry_handles.values():
            handle.cancel()
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        close = getattr(self.source, "close", None)
        if close is not None:
            await close()
