"""Unit tests of the benchmarks' load generator (e2e/bench/loadgen.py) against a scripted SSE
server in this process: what it counts as tokens, TTFT, completion and errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "e2e" / "bench"))

import loadgen


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert loadgen.percentile(values, 50) == 50.0
    assert loadgen.percentile(values, 99) == 99.0
    assert loadgen.percentile(values, 100) == 100.0
    assert loadgen.percentile([3.0], 95) == 3.0
    assert math.isnan(loadgen.percentile([], 50))


def test_format_table_aligns_and_formats() -> None:
    out = loadgen.format_table(["a", "bb"], [[1, 0.5], [22, float("nan")], [3, 1234.5]])
    lines = out.splitlines()
    assert lines[0] == "| a  | bb   |"
    assert lines[1] == "|----|------|"
    assert lines[2] == "| 1  | 0.50 |"
    assert lines[3] == "| 22 | n/a  |"
    assert lines[4] == "| 3  | 1234 |"


def sse(chunks: list[dict[str, Any]], done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return out + (b"data: [DONE]\n\n" if done else b"")


def chunk(text: str, finish: str | None = None, usage: dict[str, int] | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}
    if usage:
        c["usage"] = usage
    return c


@contextlib.asynccontextmanager
async def scripted_server(mode: str = "ok") -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A server whose behaviour per request is scripted through the returned dict (started in the
    test's own event loop)."""
    script: dict[str, Any] = {"mode": mode, "bodies": []}

    async def completions(request: web.Request) -> web.StreamResponse:
        script["bodies"].append(await request.json())
        mode = script["mode"]
        if mode == "429":
            return web.json_response(
                {"error": {"message": "busy", "type": "rate_limit_error", "param": None, "code": None}},
                status=429,
                headers={"Retry-After": "1"},
            )
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(0.02)
        if mode == "ok":
            await resp.write(sse([chunk("a"), chunk(" b"), chunk("", "length"), {"choices": [], "usage":
                                 {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}]))  # fmt: skip
        elif mode == "no-usage":
            await resp.write(sse([chunk("a"), chunk(" b"), chunk(" c", "length")]))
        elif mode == "truncated":
            await resp.write(sse([chunk("a")], done=False))
        elif mode == "in-stream-error":
            await resp.write(sse([chunk("a"), {"error": {"message": "engine died"}}], done=False))
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", script
    finally:
        await runner.cleanup()


async def test_counts_usage_tokens_and_ttft() -> None:
    async with scripted_server() as (url, script):
        cfg = loadgen.LoadConfig(base_url=url, model="m", concurrency=3, duration_s=0.2, max_tokens=7)
        result = await loadgen.run_load(cfg)
    assert result.results and not result.errors
    assert all(r.output_tokens == 7 and r.prompt_tokens == 5 for r in result.results)
    assert all(r.ttft_s is not None and 0 < r.ttft_s <= r.e2e_s for r in result.results)
    assert result.output_tokens == 7 * len(result.results)
    assert result.max_in_flight == 3
    body = script["bodies"][0]
    assert body["stream"] is True and body["ignore_eos"] is True and body["max_tokens"] == 7
    assert body["stream_options"] == {"include_usage": True}


async def test_without_usage_counts_text_chunks() -> None:
    async with scripted_server("no-usage") as (url, _):
        cfg = loadgen.LoadConfig(base_url=url, model="m", duration_s=0.05, max_requests=1)
        result = await loadgen.run_load(cfg)
    assert [r.output_tokens for r in result.results] == [3]
    assert [r.chunks for r in result.results] == [3]
    assert result.results[0].ok


@pytest.mark.parametrize("mode", ["truncated", "in-stream-error", "429"])
async def test_failures_are_errors(mode: str) -> None:
    async with scripted_server(mode) as (url, _):
        cfg = loadgen.LoadConfig(
            base_url=url, model="m", duration_s=0.05, max_requests=2, request_timeout_s=10
        )
        result = await loadgen.run_load(cfg)
    assert len(result.results) == 2
    assert not result.ok and result.output_tokens == 0
    if mode == "429":
        assert result.statuses[429] == 2
        assert all(r.retry_after == "1" for r in result.results)


async def test_transport_error_is_status_zero() -> None:
    cfg = loadgen.LoadConfig(base_url="http://127.0.0.1:9", model="m", duration_s=0.05, max_requests=1)
    result = await loadgen.run_load(cfg)
    assert [r.status for r in result.results] == [0]
    assert result.results[0].error
