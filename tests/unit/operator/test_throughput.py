"""Throughput from runtime metrics: parsing, rates, quantiles, aggregation, write policy."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from infera_operator import throughput as tp
from infera_operator.collector import PodTarget, ScrapeSource, ThroughputCollector, WritePolicy

BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0)


class FakeRuntime:
    """The runtime's metric names, exported by the real prometheus_client."""

    def __init__(self) -> None:
        self.reg = CollectorRegistry()
        self.gen = Counter("infera_generation_tokens", "t", registry=self.reg)
        self.req = Counter("infera_requests", "r", ["endpoint", "status"], registry=self.reg)
        self.inflight = Gauge("infera_requests_in_flight", "i", registry=self.reg)
        self.kv = Gauge("infera_kv_cache_usage_ratio", "k", registry=self.reg)
        self.ttft = Histogram("infera_time_to_first_token_seconds", "f", buckets=BUCKETS, registry=self.reg)

    def text(self) -> str:
        return generate_latest(self.reg).decode()


def test_parse_metrics_reads_the_runtime_names() -> None:
    rt = FakeRuntime()
    rt.gen.inc(120)
    rt.req.labels("/v1/chat/completions", "200").inc(3)
    rt.req.labels("/v1/completions", "400").inc(1)
    rt.inflight.set(2)
    rt.kv.set(0.25)
    rt.ttft.observe(0.03)
    s = tp.parse_metrics(rt.text(), t=5.0)
    assert s.t == 5.0
    assert s.generation_tokens == 120
    assert s.requests == 4
    assert s.in_flight == 2
    assert s.kv_cache == 0.25
    assert dict(s.ttft_buckets)[0.05] == 1
    assert dict(s.ttft_buckets)[0.01] == 0
    assert dict(s.ttft_buckets)[math.inf] == 1


def test_counter_reset_counts_new_value() -> None:
    assert tp.counter_increase(100, 130) == 30
    assert tp.counter_increase(100, 7) == 7  # restarted pod


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0.5, 0.05), (0.25, 0.03), (0.75, 0.075), (1.0, 0.1)],
)
def test_histogram_quantile_interpolates_like_promql(q: float, expected: float) -> None:
    # 4 observations: 2 in (0.05, 0.1], 2 in (0.01, 0.05]
    buckets = [(0.01, 0), (0.05, 2), (0.1, 4), (math.inf, 4)]
    assert tp.histogram_quantile(q, buckets) == pytest.approx(expected)


def test_histogram_quantile_empty_and_inf_bucket() -> None:
    assert tp.histogram_quantile(0.5, []) is None
    assert tp.histogram_quantile(0.5, [(0.1, 0), (math.inf, 0)]) is None
    assert tp.histogram_quantile(0.99, [(0.1, 1), (math.inf, 10)]) == 0.1


def test_window_rates_use_oldest_sample_in_window() -> None:
    w = tp.PodWindow(window_s=10)
    for t, gen in [(0, 0), (5, 50), (10, 100), (15, 200), (20, 300)]:
        w.add(tp.Sample(t=t, generation_tokens=gen, requests=gen / 10))
    r = tp.pod_rates(w)
    assert r is not None
    # window of 10 s ending at 20 keeps the sample at t=10: (300-100)/10
    assert r.generation_tokens_per_s == pytest.approx(20)
    assert r.requests_per_s == pytest.approx(2)


def test_single_sample_has_no_rate() -> None:
    w = tp.PodWindow(window_s=10)
    w.add(tp.Sample(t=0, generation_tokens=5))
    assert tp.pod_rates(w) is None


def test_aggregate_sums_pods_and_merges_histograms() -> None:
    a = tp.PodRates(10.0, 1.0, 2, 0.2, ((0.05, 1), (0.1, 2), (math.inf, 2)))
    b = tp.PodRates(30.0, 2.0, 3, 0.4, ((0.05, 1), (0.1, 2), (math.inf, 2)))
    out = tp.aggregate({"a": a, "b": b}, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert out["generationTokensPerSecond"] == 40.0
    assert out["requestsPerSecond"] == 3.0
    assert out["inFlightRequests"] == 5
    assert out["kvCacheUsage"] == pytest.approx(0.3)
    assert out["pods"] == 2
    assert out["measuredAt"] == "2026-01-02T03:04:05Z"
    assert out["ttftSecondsP50"] == pytest.approx(0.05)
    assert 0.05 < float(out["ttftSecondsP95"]) <= 0.1  # type: ignore[arg-type]


def test_aggregate_rounds_to_three_significant_figures() -> None:
    out = tp.aggregate({"a": tp.PodRates(123.456789, 0.0123456, 0, None, ())})
    assert out["generationTokensPerSecond"] == 123.0
    assert out["requestsPerSecond"] == 0.0123
    assert "kvCacheUsage" not in out and "ttftSecondsP50" not in out


def test_meaningful_change_threshold() -> None:
    base = {"generationTokensPerSecond": 100.0, "requestsPerSecond": 2.0, "inFlightRequests": 4, "pods": 1}
    assert not tp.meaningfully_changed(base, {**base, "generationTokensPerSecond": 105.0})
    assert tp.meaningfully_changed(base, {**base, "generationTokensPerSecond": 120.0})
    assert tp.meaningfully_changed(base, {**base, "inFlightRequests": 0})
    assert tp.meaningfully_changed(base, {**base, "pods": 2})
    assert tp.meaningfully_changed(None, base)
    assert not tp.meaningfully_changed(base, {**base, "measuredAt": "later"})


def test_write_policy_bounds_write_rate() -> None:
    p = WritePolicy(min_interval_s=10, max_interval_s=60, rel_change=0.1)
    a = {"generationTokensPerSecond": 100.0, "pods": 1}
    assert p.should_write(None, None, a, now=0)
    assert not p.should_write(a, 0, {**a, "generationTokensPerSecond": 500.0}, now=5)  # too soon
    assert p.should_write(a, 0, {**a, "generationTokensPerSecond": 500.0}, now=11)
    assert not p.should_write(a, 0, {**a, "generationTokensPerSecond": 102.0}, now=30)  # small drift
    assert p.should_write(a, 0, {**a, "generationTokensPerSecond": 102.0}, now=61)  # bounded interval
    assert not p.should_write(a, 0, dict(a), now=1000)  # nothing changed: never write


async def test_scrape_source_against_an_http_server() -> None:
    rt = FakeRuntime()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=rt.text(), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    src = ScrapeSource(window_s=60)
    col = ThroughputCollector(src)
    pods = [PodTarget("p0", "127.0.0.1", port), PodTarget("gone", "127.0.0.1", 1)]
    try:
        assert await col.collect("ns/a", pods) is None  # one sample: no rate yet
        rt.gen.inc(500)
        rt.req.labels("/v1/completions", "200").inc(5)
        rt.ttft.observe(0.07)
        rt.inflight.set(3)
        out = await col.collect("ns/a", pods)
        assert out is not None
        assert float(out["generationTokensPerSecond"]) > 0  # type: ignore[arg-type]
        assert out["inFlightRequests"] == 3
        assert out["pods"] == 1  # the unreachable pod is left out
        assert 0.05 <= float(out["ttftSecondsP50"]) <= 0.1  # type: ignore[arg-type]
        empty = await col.collect("ns/a", [])
        assert empty is not None and empty["pods"] == 0 and empty["generationTokensPerSecond"] == 0.0
    finally:
        await src.close()
        await runner.cleanup()
