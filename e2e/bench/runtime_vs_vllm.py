"""Benchmark: the infera runtime vs raw vLLM, same model on the same vLLM build, same load.

Three servers, one at a time (never two at once): raw vLLM's OpenAI server (``raw``), raw vLLM with
``--api-server-count 2`` (``raw2``, a second anchor: two API processes over one engine), and this
checkout's runtime (``ours``). Rounds alternate the order (ABBA: raw, raw2, ours, then ours, raw2,
raw, ...) so drift in the machine falls on all of them. In each round a closed-loop streaming
load runs at each concurrency for ``--duration`` seconds (fixed prompt, fixed output length via
``max_tokens`` + ``ignore_eos``).

Per request the client counts every SSE event, the body bytes and the tokens (from the final
usage), and measures time to first token two ways: at the first event that carries text, and at
the first event with ``choices`` (what ``vllm bench serve`` takes as TTFT: a server that sent an
empty role event before the first token would look faster there, not in the first column).

The table gives, per concurrency, ours/raw as the median of the per-round paired ratios with
their min-max, for output tokens/s and TTFT p50, plus the medians of every figure.

Usage::

    .venv/bin/python e2e/bench/runtime_vs_vllm.py                           # 5 rounds, ~20 min on 2 cores
    .venv/bin/python e2e/bench/runtime_vs_vllm.py --rounds 2 --duration 6   # quick
    .venv/bin/python e2e/bench/runtime_vs_vllm.py --chat                    # /v1/chat/completions
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


def warm_up(base_url: str, model: str, max_tokens: int, chat: bool) -> None:
    async def _go() -> None:
        cfg = LoadConfig(base_url=base_url, model=model, max_tokens=max_tokens, prompt=PROMPT, chat=chat)
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
        warm_up(srv.base_url, "tiny", args.max_tokens, args.chat)
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
                chat=args.chat,
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


def ratio(ours: float, raw: float) -> float:
    return ours / raw if raw else float("nan")


def spread(values: list[float]) -> str:
    ordered = sorted(v for v in values if v == v)
    if not ordered:
        return "n/a"
    mid = (
        ordered[(len(ordered) - 1) // 2]
        if len(ordered) % 2
        else (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2
    )
    return f"{mid:.2f} ({ordered[0]:.2f}-{ordered[-1]:.2f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="model dir (default: the tiny test model)")
    ap.add_argument("--concurrency", default="1,16,64", help="comma-separated stream counts")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of load per concurrency level")
    ap.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (ignore_eos)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds; the order of servers alternates (ABBA)")
    ap.add_argument(
        "--chat", action="store_true", help="load /v1/chat/completions instead of /v1/completions"
    )
    ap.add_argument("--no-raw2", action="store_true", help="leave out raw vLLM with --api-server-count 2")
    ap.add_argument("--json", type=Path, help="also write all results here")
    args = ap.parse_args(argv)
    model = args.model or tiny_model()
    levels = [int(x) for x in args.concurrency.split(",")]
    servers: dict[str, Callable[[], AbstractContextManager[Server]]] = {
        "raw": lambda: raw_vllm_server(model),
        "raw2": lambda: raw_vllm_server(model, extra_args=["--api-server-count", "2"]),
        "ours": lambda: runtime_server(model, engine="vllm"),
    }
    if args.no_raw2:
        del servers["raw2"]
    results: dict[str, dict[int, list[LoadResult]]] = {k: {c: [] for c in levels} for k in servers}
    t0 = time.monotonic()
    for rnd in range(args.rounds):
        order = list(servers) if rnd % 2 == 0 else list(reversed(servers))
        for key in order:
            print(f"round {rnd + 1}/{args.rounds}: {key}", flush=True)
            out = measure(servers[key], levels, args)
            for c, res in out.items():
                results[key][c].append(res)
    total = time.monotonic() - t0

    print()
    print(
        f"runtime_vs_vllm: model={model.name} endpoint={'chat' if args.chat else 'completions'} prompt_tokens="
        f"{results['raw'][levels[0]][0].prompt_tokens} max_tokens={args.max_tokens} (ignore_eos) "
        f"duration={args.duration}s/level rounds={args.rounds} (ABBA) vllm={_vllm_version()} "
        f"machine={platform.machine()} cpus={_cpus()} total={total:.0f}s"
    )
    others = [k for k in servers if k != "ours"]
    headers = [
        "streams",
        *[f"ours/{k} tok/s" for k in others],
        *[f"ours/{k} TTFT p50" for k in others],
        "tok/s " + "/".join(servers),
        "TTFT p50 ms " + "/".join(servers),
        "1st event p50 ms " + "/".join(servers),
        "e2e p50 ms " + "/".join(servers),
        "e2e p99 ms " + "/".join(servers),
        "events/req " + "/".join(servers),
        "bytes/req " + "/".join(servers),
        "tokens/req " + "/".join(servers),
        "errors",
    ]

    def med(key: str, c: int, fn: Callable[[LoadResult], float]) -> float:
        vals = sorted(fn(r) for r in results[key][c])
        return vals[(len(vals) - 1) // 2]

    def cell(c: int, fn: Callable[[LoadResult], float], fmt: str = "{:.0f}") -> str:
        return " / ".join(fmt.format(med(k, c, fn)) for k in servers)

    rows: list[list[Any]] = []
    for c in levels:
        paired_tok = {
            k: [
                ratio(o.tokens_per_s, r.tokens_per_s)
                for o, r in zip(results["ours"][c], results[k][c], strict=True)
            ]
            for k in others
        }
        paired_ttft = {
            k: [ratio(o.ttft(50), r.ttft(50)) for o, r in zip(results["ours"][c], results[k][c], strict=True)]
            for k in others
        }
        rows.append(
            [
                c,
                *[spread(paired_tok[k]) for k in others],
                *[spread(paired_ttft[k]) for k in others],
                cell(c, lambda r: r.tokens_per_s),
                cell(c, lambda r: r.ttft(50) * 1e3, "{:.1f}"),
                cell(c, lambda r: r.first_event(50) * 1e3, "{:.1f}"),
                cell(c, lambda r: r.e2e(50) * 1e3),
                cell(c, lambda r: r.e2e(99) * 1e3),
                cell(c, lambda r: r.events_per_request, "{:.1f}"),
                cell(c, lambda r: r.bytes_per_request),
                cell(c, lambda r: r.tokens_per_request, "{:.1f}"),
                " / ".join(str(sum(len(r.errors) for r in results[k][c])) for k in servers),
            ]
        )
    print(format_table(headers, rows))
    print()
    print("every round (output tokens/s; TTFT p50 ms), in the order run:")
    round_rows = [
        [
            c,
            *[
                ", ".join(f"{r.tokens_per_s:.0f}; {r.ttft(50) * 1e3:.1f}" for r in results[k][c])
                for k in servers
            ],
        ]
        for c in levels
    ]
    print(format_table(["streams", *servers], round_rows))
    if args.json:
        args.json.write_text(
            json.dumps(
                {k: {c: [r.summary() for r in v] for c, v in d.items()} for k, d in results.items()}, indent=1
            )
        )
    bad = sum(len(r.errors) for d in results.values() for v in d.values() for r in v)
    return 1 if bad else 0


def _vllm_version() -> str:
    import subprocess

    from infera_testenv.openai_servers import PYTHON

    out = subprocess.run(
        [PYTHON, "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True
    )
    return out.stdout.strip() or "?"


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
