"""Benchmark: what huge prompts cost everyone else, ours vs raw vLLM (same model, one at a time).

While ``--huge`` concurrent clients each send a ``--mb`` MB prompt (far over the context) again and
again, a small client sends a 1-token completion in a loop; its latency is compared with the
same client's latency on the idle server. Ours refuses the huge prompts by size before any
tokenization; raw vLLM tokenizes (or character-checks) them first.

Usage::

    .venv/bin/python e2e/bench/huge_prompts.py                 # 3 x 10 MB, ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from loadgen import format_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from infera_testenv.openai_servers import raw_vllm_server, runtime_server, tiny_model

SMALL = {"model": "tiny", "prompt": "hello", "max_tokens": 1, "temperature": 0}


async def small_latencies(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with session.post(url + "/v1/completions", json=SMALL) as r:
            await r.read()
            assert r.status == 200, r.status
        out.append(time.perf_counter() - t0)
    return out


async def measure(url: str, huge: int, mb: int, n: int) -> dict[str, Any]:
    body = ('{"model": "tiny", "max_tokens": 1, "prompt": "' + "x " * (mb * 500_000) + '"}').encode()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        await small_latencies(session, url, 5)  # warm
        idle = await small_latencies(session, url, n)
        stop = asyncio.Event()
        refused: list[float] = []
        statuses: dict[int, int] = {}

        async def hammer() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                async with session.post(
                    url + "/v1/completions", data=body, headers={"content-type": "application/json"}
                ) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                refused.append(time.perf_counter() - t0)

        tasks = [asyncio.create_task(hammer()) for _ in range(huge)]
        await asyncio.sleep(0.5)
        loaded = await small_latencies(session, url, n)
        stop.set()
        await asyncio.gather(*tasks)
    return {
        "idle_p50": statistics.median(idle),
        "loaded_p50": statistics.median(loaded),
        "loaded_max": max(loaded),
        "huge_p50": statistics.median(refused) if refused else float("nan"),
        "huge_sent": len(refused),
        "statuses": statuses,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--huge", type=int, default=3, help="concurrent clients sending huge prompts")
    ap.add_argument("--mb", type=int, default=10, help="size of each huge prompt in MB")
    ap.add_argument("--n", type=int, default=30, help="small requests per phase")
    args = ap.parse_args(argv)
    model = tiny_model()
    rows = []
    for name, cm in (("raw vllm serve", raw_vllm_server), ("ours", runtime_server)):
        with cm(model) as srv:
            m = asyncio.run(measure(srv.base_url, args.huge, args.mb, args.n))
        rows.append(
            [
                name,
                f"{m['idle_p50'] * 1e3:.1f}",
                f"{m['loaded_p50'] * 1e3:.1f}",
                f"{(m['loaded_p50'] - m['idle_p50']) * 1e3:+.1f}",
                f"{m['loaded_max'] * 1e3:.1f}",
                f"{m['huge_p50'] * 1e3:.0f}",
                m["huge_sent"],
                m["statuses"],
            ]
        )
    print(f"huge_prompts: {args.huge} clients x {args.mb} MB prompts, {args.n} small requests per phase")
    print(
        format_table(
            [
                "server",
                "small p50 idle ms",
                "small p50 loaded ms",
                "added ms",
                "small max loaded ms",
                "huge answer p50 ms",
                "huge sent",
                "huge statuses",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
