"""Benchmark: the runtime's HTTP/serving ceiling, with the synthetic engine (no model compute).

Two parts, each against one runtime process (``INFERA_ENGINE=synthetic``) while this process
generates the load (so on a 2-core machine the server gets about one core):

1. *flat out*: the engine emits tokens as fast as the server asks (``token_latency_s=0``);
   streamed output tokens/s and requests/s at each concurrency;
2. *held streams*: the engine paces each stream like a real model (``--token-latency``, default
   20 ms/token = 50 tokens/s per stream) so every stream stays open for seconds; shows how many
   concurrent streams the server holds with zero errors (server-side ``infera_requests_in_flight``
   peak, sampled from ``/metrics`` during the run) and the latency it adds.

Usage::

    .venv/bin/python e2e/bench/http_ceiling.py                 # ~1.5 min
    .venv/bin/python e2e/bench/http_ceiling.py --flat 1,64,256 --held 200,400 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from loadgen import LoadConfig, LoadResult, format_table, run_load

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from infera_testenv.openai_servers import runtime_server

GAUGE = re.compile(r"^infera_requests_in_flight(?:\{[^}]*\})?\s+([0-9.eE+-]+)$", re.M)


async def load_with_gauge(cfg: LoadConfig, metrics_url: str) -> tuple[LoadResult, float]:
    """Run the load while sampling the server's in-flight gauge; return (result, peak gauge)."""
    peak = 0.0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        async with aiohttp.ClientSession() as s:
            while not done.is_set():
                try:
                    async with s.get(metrics_url, timeout=aiohttp.ClientTimeout(total=5)) as r:
                        m = GAUGE.search(await r.text())
                        if m:
                            peak = max(peak, float(m.group(1)))
                except (aiohttp.ClientError, TimeoutError, OSError):
                    pass
                await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    try:
        result = await run_load(cfg)
    finally:
        done.set()
        await sampler
    return result, peak


def run_part(
    name: str, levels: list[int], token_latency: float, args: argparse.Namespace
) -> list[tuple[LoadResult, float]]:
    env = {
        "INFERA_ENGINE_ARGS": json.dumps({"token_latency_s": token_latency}),
        "INFERA_MAX_INFLIGHT": str(args.max_inflight),
        "INFERA_MAX_QUEUE": str(args.max_queue),
        "INFERA_LOG_LEVEL": args.log_level,
    }
    out = []
    with runtime_server("synthetic-model", served_name="synthetic", engine="synthetic", extra_env=env) as srv:
        for c in levels:
            cfg = LoadConfig(
                base_url=srv.base_url,
                model="synthetic",
                concurrency=c,
                duration_s=args.duration,
                max_tokens=args.max_tokens,
                prompt="hello world how are you today",
                ignore_eos=True,
            )
            res, peak = asyncio.run(load_with_gauge(cfg, srv.base_url + "/metrics"))
            s = res.summary()
            print(
                f"  {name} c={c:<4d} {s['tokens_per_s']:>9.1f} tok/s ok={s['ok']} err={s['errors']} "
                f"statuses={s['statuses']} server in-flight peak={peak:.0f}",
                flush=True,
            )
            for e in res.errors[:3]:
                print(f"    error: {e.status} {e.error}", flush=True)
            out.append((res, peak))
    return out


def table(rows: list[tuple[LoadResult, float]]) -> str:
    headers = [
        "streams",
        "requests",
        "errors",
        "non-200",
        "server in-flight peak",
        "output tok/s",
        "req/s",
        "TTFT p50 ms",
        "TTFT p95 ms",
        "e2e p50 ms",
        "e2e p99 ms",
    ]
    body: list[list[Any]] = []
    for res, peak in rows:
        body.append(
            [
                res.config.concurrency,
                len(res.results),
                len(res.errors),
                sum(n for st, n in res.statuses.items() if st != 200),
                int(peak),
                res.tokens_per_s,
                res.requests_per_s,
                res.ttft(50) * 1e3,
                res.ttft(95) * 1e3,
                res.e2e(50) * 1e3,
                res.e2e(99) * 1e3,
            ]
        )
    return str(format_table(headers, body))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flat", default="1,64,256", help="concurrency levels, flat-out engine")
    ap.add_argument("--held", default="200,400", help="concurrency levels, paced engine")
    ap.add_argument("--duration", type=float, default=12.0)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--token-latency", type=float, default=0.02, help="seconds per token in the held part")
    ap.add_argument("--max-inflight", type=int, default=512)
    ap.add_argument("--max-queue", type=int, default=512)
    ap.add_argument("--log-level", default="warning", help="runtime log level (info logs every request)")
    args = ap.parse_args(argv)
    flat = [int(x) for x in args.flat.split(",") if x]
    held = [int(x) for x in args.held.split(",") if x]
    t0 = time.monotonic()
    print("part 1: flat out (token_latency_s=0)", flush=True)
    flat_rows = run_part("flat", flat, 0.0, args)
    print(f"part 2: held streams (token_latency_s={args.token_latency})", flush=True)
    held_rows = run_part("held", held, args.token_latency, args)
    total = time.monotonic() - t0
    print()
    print(
        f"http_ceiling: engine=synthetic max_tokens={args.max_tokens} (ignore_eos) duration={args.duration}s/level "
        f"max_inflight={args.max_inflight} max_queue={args.max_queue} log_level={args.log_level} "
        f"machine={platform.machine()} cpus={len(os.sched_getaffinity(0))} total={total:.0f}s"
    )
    print("flat out (engine emits tokens as fast as asked):")
    print(table(flat_rows))
    print()
    print(f"held streams (engine paced at {args.token_latency * 1e3:.0f} ms/token per stream):")
    print(table(held_rows))
    bad = sum(len(r.errors) for r, _ in flat_rows + held_rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
