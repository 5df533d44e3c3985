"""Load: many concurrent streaming clients against one runtime, for a bounded time.

* 200 concurrent streaming clients for ~20 s against the synthetic engine (the web layer under
  load): zero 5xx, zero transport errors, every accepted stream completes with every token;
* a small overload of the real vLLM-CPU engine (max_inflight=2, max_queue=2): what does not fit
  is answered at once with 429 + Retry-After in OpenAI's shape, everything admitted completes.

Durations are bounds for the load, never asserted as results.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from dataclasses import dataclass

import aiohttp
import pytest
from reliability_support import VLLM_MAX_INFLIGHT, VLLM_MAX_QUEUE, RuntimeProcess, good_request

pytestmark = pytest.mark.integration

LOAD_S = float(os.environ.get("INFERA_RELIABILITY_LOAD_S", "20"))
CLIENTS = 200
MAX_TOKENS = 32


@dataclass
class Outcome:
    status: int  # 0: transport error
    tokens: int = 0
    finish_reason: str | None = None
    done: bool = False
    retry_after: str | None = None
    error: dict[str, object] | None = None
    detail: str = ""

    @property
    def complete(self) -> bool:
        return (
            self.status == 200 and self.done and self.finish_reason == "length" and self.tokens == MAX_TOKENS
        )


async def stream_once(session: aiohttp.ClientSession, base_url: str, model: str) -> Outcome:
    body = {
        "model": model,
        "prompt": "hello world how are you",
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    try:
        async with session.post(
            base_url + "/v1/completions", json=body, timeout=aiohttp.ClientTimeout(total=120)
        ) as r:
            if r.status != 200:
                text = await r.text()
                try:
                    err = json.loads(text).get("error")
                except ValueError:
                    err = None
                return Outcome(
                    r.status, retry_after=r.headers.get("Retry-After"), error=err, detail=text[:300]
                )
            out = Outcome(200)
            async for raw in r.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    out.done = True
                    continue
                chunk = json.loads(payload)
                if "error" in chunk:
                    out.detail = f"in-stream error {chunk['error']}"
                    return out
                for choice in chunk.get("choices") or []:
                    out.finish_reason = choice.get("finish_reason") or out.finish_reason
                if chunk.get("usage"):
                    out.tokens = int(chunk["usage"]["completion_tokens"])
            return out
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        return Outcome(0, detail=f"{type(exc).__name__}: {exc}")


async def sample_peak(runtime: RuntimeProcess, stop: asyncio.Event) -> float:
    peak = 0.0
    while not stop.is_set():
        value = await asyncio.to_thread(runtime.metric, "infera_requests_in_flight")
        peak = max(peak, value)
        await asyncio.sleep(0.5)
    return peak


def test_200_concurrent_streams(synthetic_runtime: RuntimeProcess) -> None:
    ok_before = synthetic_runtime.metric("infera_requests_total", status="200")

    async def main() -> tuple[list[Outcome], float]:
        outcomes: list[Outcome] = []
        deadline = time.monotonic() + LOAD_S
        stop = asyncio.Event()

        async def client(session: aiohttp.ClientSession) -> None:
            while time.monotonic() < deadline:
                outcomes.append(await stream_once(session, synthetic_runtime.base_url, "synthetic"))

        sampler = asyncio.create_task(sample_peak(synthetic_runtime, stop))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await asyncio.gather(*(client(session) for _ in range(CLIENTS)))
        stop.set()
        return outcomes, await sampler

    outcomes, peak = asyncio.run(main())
    statuses = Counter(o.status for o in outcomes)
    failures = [o for o in outcomes if not o.complete]
    assert len(outcomes) >= CLIENTS
    assert not [o for o in outcomes if o.status >= 500 or o.status == 0], statuses
    assert not failures, f"{len(failures)} incomplete of {len(outcomes)}; first: {failures[0]}; {statuses}"
    # the 200 clients really were served at the same time
    assert peak >= CLIENTS / 2, f"server in-flight peak {peak}"
    # the server counted exactly what the clients saw
    ok_after = synthetic_runtime.metric("infera_requests_total", status="200")
    assert ok_after - ok_before == statuses[200]
    assert synthetic_runtime.alive()
    good_request(synthetic_runtime.base_url, "synthetic")


def test_overload_answered_with_429(vllm_runtime: RuntimeProcess) -> None:
    capacity = VLLM_MAX_INFLIGHT + VLLM_MAX_QUEUE
    refused_before = vllm_runtime.metric("infera_requests_total", status="429")

    async def main() -> tuple[list[Outcome], list[Outcome]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            # a burst of 4x capacity arriving at once
            burst = await asyncio.gather(
                *(stream_once(session, vllm_runtime.base_url, "tiny") for _ in range(4 * capacity))
            )
            # then 8 s of 3x capacity closed-loop clients that honour Retry-After
            later: list[Outcome] = []
            deadline = time.monotonic() + 8

            async def client() -> None:
                while time.monotonic() < deadline:
                    o = await stream_once(session, vllm_runtime.base_url, "tiny")
                    later.append(o)
                    if o.status == 429:
                        await asyncio.sleep(float(o.retry_after or 1))

            await asyncio.gather(*(client() for _ in range(3 * capacity)))
            return list(burst), later

    burst, later = asyncio.run(main())
    everything = burst + later
    statuses = Counter(o.status for o in everything)
    assert set(statuses) <= {200, 429}, statuses
    burst_statuses = Counter(o.status for o in burst)
    assert burst_statuses[429] >= 1, burst_statuses
    assert burst_statuses[200] >= capacity, burst_statuses
    for o in everything:
        if o.status == 429:
            assert o.retry_after is not None and int(o.retry_after) >= 1, o
            assert o.error is not None and o.error.get("type") == "rate_limit_error", o
            assert isinstance(o.error.get("message"), str) and o.error["message"], o
        else:
            assert o.complete, o
    refused_after = vllm_runtime.metric("infera_requests_total", status="429")
    assert refused_after - refused_before == statuses[429]
    assert vllm_runtime.alive()
    good_request(vllm_runtime.base_url, "tiny")
