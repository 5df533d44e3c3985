"""Collect live throughput for InferenceServices from their runtime pods.

Two sources:

* ``ScrapeSource`` (default): GET ``http://<podIP>:<port>/metrics`` on each ready pod, the way a
  Prometheus server would, and compute rates in the operator (``throughput.py``).
* ``PrometheusSource``: ask an existing Prometheus server (``--prometheus-url``) with PromQL, for
  clusters where the operator cannot reach pod IPs or Prometheus already scrapes them.

``ThroughputCollector.collect()`` returns the ``status.throughput`` block, or ``None`` while there
is nothing to report yet. ``WritePolicy`` decides when that block is worth a status write, so a
busy cluster is not flooded: only on a meaningful change (default 10%), never more often than
``min_interval_s``, and at least every ``max_interval_s`` while values drift.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import aiohttp

from infera_operator import throughput as tp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PodTarget:
    name: str
    ip: str
    port: int = 8000
    path: str = "/metrics"


class MetricsSource(Protocol):
    async def rates(self, key: str, pods: Sequence[PodTarget]) -> dict[str, tp.PodRates]: ...

    def forget(self, key: str) -> None: ...


@dataclass
class ScrapeSource:
    """Scrape pods directly and keep a per-pod window of samples."""

    window_s: float = 60.0
    timeout_s: float = 2.0
    _windows: dict[str, dict[str, tp.PodWindow]] = field(default_factory=dict)
    _session: aiohttp.ClientSession | None = None

    async def _get(self, pod: PodTarget) -> str | None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        url = f"http://{pod.ip}:{pod.port}{pod.path}"
        try:
            async with self._session.get(url) as resp:
                if resp.status != 200:
                    log.debug("scrape %s: HTTP %s", url, resp.status)
                    return None
                return await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("scrape %s failed: %s", url, exc)
            return None

    async def rates(self, key: str, pods: Sequence[PodTarget]) -> dict[str, tp.PodRates]:
        texts = await asyncio.gather(*(self._get(p) for p in pods))
        now = time.monotonic()
        windows = self._windows.setdefault(key, {})
        for gone in set(windows) - {p.name for p in pods}:
            del windows[gone]  # pod deleted or no longer ready
        out: dict[str, tp.PodRates] = {}
        for pod, text in zip(pods, texts, strict=True):
            if text is None:
                continue
            try:
                sample = tp.parse_metrics(text, now)
            except ValueError as exc:
                log.warning("pod %s served unparsable metrics: %s", pod.name, exc)
                continue
            w = windows.setdefault(pod.name, tp.PodWindow(self.window_s))
            w.add(sample)
            r = tp.pod_rates(w)
            if r is not None:
                out[pod.name] = r
        return out

    def forget(self, key: str) -> None:
        self._windows.pop(key, None)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


@dataclass
class PrometheusSource:
    """Query a Prometheus server: rates per pod over ``window_s``."""

    url: str
    window_s: float = 60.0
    timeout_s: float = 5.0
    namespace_label: str = "namespace"
    pod_label: str = "pod"
    _session: aiohttp.ClientSession | None = None

    async def _query(self, promql: str) -> list[tuple[Mapping[str, str], float]]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        async with self._session.get(
            f"{self.url.rstrip('/')}/api/v1/query", params={"query": promql}
        ) as resp:
            body = await resp.json()
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus query failed: {body.get('error', body)}")
        return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]

    async def rates(self, key: str, pods: Sequence[PodTarget]) -> dict[str, tp.PodRates]:
        if not pods:
            return {}
        namespace = key.split("/", 1)[0]
        names = "|".join(p.name for p in pods)
        sel = f'{self.namespace_label}="{namespace}",{self.pod_label}=~"{names}"'
        w = f"{int(self.window_s)}s"
        by = f"by ({self.pod_label})"
        try:
            gen, req, infl, kv, buckets = await asyncio.gather(
                self._query(f"sum {by} (rate({tp.GEN_TOKENS}_total{{{sel}}}[{w}]))"),
                self._query(f"sum {by} (rate({tp.REQUESTS}_total{{{sel}}}[{w}]))"),
                self._query(f"sum {by} ({tp.IN_FLIGHT}{{{sel}}})"),
                self._query(f"max {by} ({tp.KV_CACHE}{{{sel}}})"),
                self._query(f"sum by ({self.pod_label}, le) (increase({tp.TTFT}_bucket{{{sel}}}[{w}]))"),
            )
        except (aiohttp.ClientError, TimeoutError, RuntimeError, KeyError, ValueError) as exc:
            log.warning("Prometheus at %s: %s", self.url, exc)
            return {}

        def per_pod(rows: list[tuple[Mapping[str, str], float]]) -> dict[str, float]:
            return {m.get(self.pod_label, ""): v for m, v in rows}

        g, r, i, k = per_pod(gen), per_pod(req), per_pod(infl), per_pod(kv)
        hist: dict[str, dict[float, float]] = {}
        for m, v in buckets:
            hist.setdefault(m.get(self.pod_label, ""), {})[float(m["le"])] = v
        return {
            name: tp.PodRates(
                generation_tokens_per_s=g.get(name, 0.0),
                requests_per_s=r.get(name, 0.0),
                in_flight=i.get(name, 0.0),
                kv_cache=k.get(name),
                ttft_increase=tuple(sorted(hist.get(name, {}).items())),
            )
            for name in {p.name for p in pods} & (set(g) | set(r) | set(i))
        }

    def forget(self, key: str) -> None:
        pass

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


@dataclass
class ThroughputCollector:
    source: MetricsSource

    async def collect(self, key: str, pods: Sequence[PodTarget]) -> dict[str, object] | None:
        """The status.throughput block for one InferenceService (``key`` = namespace/name)."""
        if not pods:
            self.source.forget(key)
            return tp.aggregate({}, datetime.now(UTC))
        rates = await self.source.rates(key, pods)
        if not rates:
            return None  # first scrape of these pods, or none answered: nothing to report yet
        return tp.aggregate(rates, datetime.now(UTC))

    def forget(self, key: str) -> None:
        self.source.forget(key)


@dataclass
class WritePolicy:
    """When is a new throughput block worth a status write?"""

    min_interval_s: float = 10.0
    max_interval_s: float = 120.0
    rel_change: float = 0.1

    def should_write(
        self,
        last: Mapping[str, object] | None,
        last_write_t: float | None,
        new: Mapping[str, object],
        now: float,
    ) -> bool:
        if last_write_t is None or not last:
            return True
        age = now - last_write_t
        if age < self.min_interval_s:
            return False
        if tp.meaningfully_changed(last, new, self.rel_change):
            return True
        return age >= self.max_interval_s and _any_value_differs(last, new)


def _any_value_differs(a: Mapping[str, object], b: Mapping[str, object]) -> bool:
    return any(a.get(k) != b.get(k) for k in set(a) | set(b) if k != "measuredAt")
