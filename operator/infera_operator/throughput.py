"""Live throughput from the runtime's Prometheus metrics: pure computations, no I/O.

The collector (``collector.py``) scrapes each ready pod's ``/metrics`` (or asks a Prometheus
server) and feeds the text here. This module turns successive scrapes into rates over a recent
window and aggregates pods into the ``status.throughput`` block of an InferenceService:

    generationTokensPerSecond, requestsPerSecond, inFlightRequests,
    ttftSecondsP50, ttftSecondsP95, kvCacheUsage, measuredAt, pods

Counters become rates the way PromQL's ``rate()`` does (a counter that goes down was reset by a
restart: its new value is the increase). TTFT percentiles come from the histogram's bucket
increases over the window, interpolated linearly inside a bucket like ``histogram_quantile``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

GEN_TOKENS = "infera_generation_tokens"
PROMPT_TOKENS = "infera_prompt_tokens"
REQUESTS = "infera_requests"
IN_FLIGHT = "infera_requests_in_flight"
QUEUED = "infera_requests_queued"
KV_CACHE = "infera_kv_cache_usage_ratio"
TTFT = "infera_time_to_first_token_seconds"


@dataclass(frozen=True)
class Sample:
    """One scrape of one pod, reduced to what throughput needs."""

    t: float  # seconds (monotonic or wall clock; only differences matter)
    generation_tokens: float = 0.0
    requests: float = 0.0
    in_flight: float = 0.0
    queued: float = 0.0
    kv_cache: float | None = None
    ttft_buckets: tuple[tuple[float, float], ...] = ()  # (upper bound, cumulative count), sorted


def parse_metrics(text: str, t: float) -> Sample:
    """Parse Prometheus text exposition from one runtime pod into a Sample."""
    gen = req = inflight = queued = 0.0
    kv: float | None = None
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == f"{GEN_TOKENS}_total":
                gen += s.value
            elif s.name == f"{REQUESTS}_total":
                req += s.value
            elif s.name == IN_FLIGHT:
                inflight += s.value
            elif s.name == QUEUED:
                queued += s.value
            elif s.name == KV_CACHE:
                kv = s.value if kv is None else max(kv, s.value)
            elif s.name == f"{TTFT}_bucket":
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
    return Sample(
        t=t,
        generation_tokens=gen,
        requests=req,
        in_flight=inflight,
        queued=queued,
        kv_cache=kv,
        ttft_buckets=tuple(sorted(buckets.items())),
    )


def counter_increase(old: float, new: float) -> float:
    """Increase of a counter between two readings; a decrease means it was reset."""
    return new - old if new >= old else new


def bucket_increase(
    old: tuple[tuple[float, float], ...], new: tuple[tuple[float, float], ...]
) -> tuple[tuple[float, float], ...]:
    before = dict(old)
    reset = any(new_v < before.get(le, 0.0) for le, new_v in new)
    return tuple((le, v if reset else v - before.get(le, 0.0)) for le, v in new)


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """PromQL-style quantile from cumulative (upper bound, count) buckets; None without data."""
    bs = sorted(buckets)
    if not bs or bs[-1][1] <= 0:
        return None
    total = bs[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in bs:
        if count >= rank:
            if math.isinf(le):
                return prev_le  # like Prometheus: the highest finite bound
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return bs[-1][0]


@dataclass
class PodWindow:
    """Recent samples of one pod, oldest first, trimmed to the window."""

    window_s: float
    samples: deque[Sample] = field(default_factory=deque)

    def add(self, s: Sample) -> None:
        self.samples.append(s)
        # keep one sample at or before the window start so a full window is always covered
        while len(self.samples) > 2 and self.samples[1].t <= s.t - self.window_s:
            self.samples.popleft()

    @property
    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    @property
    def oldest(self) -> Sample | None:
        return self.samples[0] if self.samples else None


@dataclass(frozen=True)
class PodRates:
    generation_tokens_per_s: float
    requests_per_s: float
    in_flight: float
    kv_cache: float | None
    ttft_increase: tuple[tuple[float, float], ...]


def pod_rates(w: PodWindow) -> PodRates | None:
    """Rates over the pod's window; None until two samples span some time."""
    old, new = w.oldest, w.latest
    if old is None or new is None or new.t <= old.t:
        return None
    dt = new.t - old.t
    return PodRates(
        generation_tokens_per_s=counter_increase(old.generation_tokens, new.generation_tokens) / dt,
        requests_per_s=counter_increase(old.requests, new.requests) / dt,
        in_flight=new.in_flight,
        kv_cache=new.kv_cache,
        ttft_increase=bucket_increase(old.ttft_buckets, new.ttft_buckets),
    )


def _round(x: float, digits: int = 3) -> float:
    """Round to ``digits`` significant figures, so tiny jitter does not read as a change."""
    if x == 0 or not math.isfinite(x):
        return 0.0
    return round(x, max(0, digits - 1 - math.floor(math.log10(abs(x)))))


def aggregate(rates: Mapping[str, PodRates], now: datetime | None = None) -> dict[str, object]:
    """Sum pods into the status.throughput block (JSON-ready, camelCase keys)."""
    now = now or datetime.now(UTC)
    merged: dict[float, float] = {}
    for r in rates.values():
        for le, v in r.ttft_increase:
            merged[le] = merged.get(le, 0.0) + v
    kvs = [r.kv_cache for r in rates.values() if r.kv_cache is not None]
    out: dict[str, object] = {
        "generationTokensPerSecond": _round(sum(r.generation_tokens_per_s for r in rates.values())),
        "requestsPerSecond": _round(sum(r.requests_per_s for r in rates.values())),
        "inFlightRequests": round(sum(r.in_flight for r in rates.values())),
        "pods": len(rates),
        "measuredAt": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    p50 = histogram_quantile(0.5, merged.items())
    p95 = histogram_quantile(0.95, merged.items())
    if p50 is not None and p95 is not None:
        out["ttftSecondsP50"] = _round(p50)
        out["ttftSecondsP95"] = _round(p95)
    if kvs:
        out["kvCacheUsage"] = _round(sum(kvs) / len(kvs))
    return out


_COMPARED = (
    "generationTokensPerSecond",
    "requestsPerSecond",
    "inFlightRequests",
    "ttftSecondsP50",
    "ttftSecondsP95",
    "kvCacheUsage",
    "pods",
)


def meaningfully_changed(
    old: Mapping[str, object] | None, new: Mapping[str, object], rel: float = 0.1
) -> bool:
    """True when a value moved by more than ``rel`` (relative), appeared, disappeared, or left zero.

    ``measuredAt`` is not compared: it changes on every measurement. Callers also write at a
    bounded interval, so a slow drift below the threshold still shows up eventually.
    """
    if not old:
        return True
    for key in _COMPARED:
        a, b = old.get(key), new.get(key)
        if (a is None) != (b is None):
            return True
        if a is None or b is None:
            continue
        fa, fb = float(a), float(b)  # type: ignore[arg-type]
        if (fa == 0) != (fb == 0):
            return True
        if abs(fa - fb) > rel * max(abs(fa), abs(fb)):
            return True
    return False
