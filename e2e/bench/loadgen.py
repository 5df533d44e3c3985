"""Async streaming load generator for OpenAI-compatible servers (used by the bench scripts).

Closed loop: ``concurrency`` workers each send a streaming ``/v1/completions`` (or chat) request,
read it to the end, and send the next one until ``duration_s`` has passed; requests in flight at
the deadline are finished and counted. Per request it records the HTTP status, time to first
token (first chunk carrying text), end-to-end latency and output tokens (from the final usage
chunk, ``stream_options.include_usage``; else one per text chunk).

Library use (asyncio)::

    cfg = LoadConfig(base_url="http://127.0.0.1:8000", model="tiny", concurrency=16, duration_s=20)
    result = await run_load(cfg)
    print(result.summary())

CLI: ``python e2e/bench/loadgen.py --url http://127.0.0.1:8000 --model tiny -c 16 -d 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class LoadConfig:
    base_url: str
    model: str
    concurrency: int = 1
    duration_s: float = 20.0
    max_tokens: int = 64
    prompt: str = "hello world how are you today"
    ignore_eos: bool = True
    chat: bool = False
    temperature: float = 0.0
    request_timeout_s: float = 300.0
    api_key: str | None = None
    max_requests: int | None = None  # stop after this many requests in total (None: duration only)


@dataclass
class RequestResult:
    status: int  # HTTP status; 0 for a transport error
    start: float
    ttft_s: float | None
    e2e_s: float
    output_tokens: int
    finished: bool  # the stream ended with a finish_reason and [DONE]
    error: str | None = None
    retry_after: str | None = None
    prompt_tokens: int | None = None
    chunks: int = 0  # SSE events that carried text
    events: int = 0  # every SSE data event, [DONE] included
    bytes: int = 0  # body bytes received
    first_event_s: float | None = None  # time to the first event with choices (vllm bench serve's TTFT)

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.finished and self.error is None


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class LoadResult:
    config: LoadConfig
    results: list[RequestResult]
    wall_s: float
    max_in_flight: int = 0
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def ok(self) -> list[RequestResult]:
        return [r for r in self.results if r.ok]

    @property
    def errors(self) -> list[RequestResult]:
        return [r for r in self.results if not r.ok]

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.ok)

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        return len(self.ok) / self.wall_s if self.wall_s > 0 else 0.0

    def ttft(self, q: float) -> float:
        return percentile([r.ttft_s for r in self.ok if r.ttft_s is not None], q)

    def e2e(self, q: float) -> float:
        return percentile([r.e2e_s for r in self.ok], q)

    @property
    def prompt_tokens(self) -> int | None:
        """Prompt tokens of the first successful request that reported usage."""
        return next((r.prompt_tokens for r in self.ok if r.prompt_tokens is not None), None)

    @property
    def chunks_per_request(self) -> float:
        return sum(r.chunks for r in self.ok) / len(self.ok) if self.ok else math.nan

    @property
    def events_per_request(self) -> float:
        return sum(r.events for r in self.ok) / len(self.ok) if self.ok else math.nan

    @property
    def bytes_per_request(self) -> float:
        return sum(r.bytes for r in self.ok) / len(self.ok) if self.ok else math.nan

    def first_event(self, q: float) -> float:
        return percentile([r.first_event_s for r in self.ok if r.first_event_s is not None], q)

    @property
    def tokens_per_request(self) -> float:
        return self.output_tokens / len(self.ok) if self.ok else math.nan

    def summary(self) -> dict[str, Any]:
        return {
            "concurrency": self.config.concurrency,
            "requests": len(self.results),
            "ok": len(self.ok),
            "errors": len(self.errors),
            "statuses": dict(sorted(self.statuses.items())),
            "max_in_flight": self.max_in_flight,
            "wall_s": round(self.wall_s, 2),
            "output_tokens": self.output_tokens,
            "tokens_per_s": round(self.tokens_per_s, 1),
            "requests_per_s": round(self.requests_per_s, 2),
            "ttft_p50_ms": round(self.ttft(50) * 1000, 1),
            "ttft_p95_ms": round(self.ttft(95) * 1000, 1),
            "e2e_p50_ms": round(self.e2e(50) * 1000, 1),
            "e2e_p99_ms": round(self.e2e(99) * 1000, 1),
            "first_event_p50_ms": round(self.first_event(50) * 1000, 1),
            "events_per_request": round(self.events_per_request, 2),
            "bytes_per_request": round(self.bytes_per_request, 1),
            "tokens_per_request": round(self.tokens_per_request, 2),
        }


def request_body(cfg: LoadConfig) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": cfg.model,
        "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if cfg.ignore_eos:
        body["ignore_eos"] = True
    if cfg.chat:
        body["messages"] = [{"role": "user", "content": cfg.prompt}]
    else:
        body["prompt"] = cfg.prompt
    return body


def _chunk_text(chunk: dict[str, Any]) -> str:
    out = ""
    for choice in chunk.get("choices") or []:
        if "text" in choice:
            out += choice.get("text") or ""
        else:
            out += (choice.get("delta") or {}).get("content") or ""
    return out


async def stream_request(
    session: aiohttp.ClientSession, cfg: LoadConfig, body: dict[str, Any] | None = None
) -> RequestResult:
    """Send one streaming request and read it to the end."""
    path = "/v1/chat/completions" if cfg.chat else "/v1/completions"
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    start = time.perf_counter()
    ttft: float | None = None
    first_event: float | None = None
    chunks_with_text = 0
    events = 0
    nbytes = 0
    usage_tokens: int | None = None
    prompt_tokens: int | None = None
    finished = False
    saw_finish_reason = False
    try:
        async with session.post(
            cfg.base_url.rstrip("/") + path,
            json=body or request_body(cfg),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=cfg.request_timeout_s),
        ) as resp:
            if resp.status != 200:
                text = await resp.text()
                return RequestResult(
                    resp.status,
                    start,
                    None,
                    time.perf_counter() - start,
                    0,
                    False,
                    error=text[:300],
                    retry_after=resp.headers.get("Retry-After"),
                )
            buf = b""
            async for data in resp.content.iter_any():
                buf += data
                nbytes += len(data)
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    events += 1
                    if payload == b"[DONE]":
                        finished = saw_finish_reason
                        continue
                    chunk = json.loads(payload)
                    if "error" in chunk:
                        return RequestResult(
                            200,
                            start,
                            ttft,
                            time.perf_counter() - start,
                            0,
                            False,
                            error=f"in-stream error: {chunk['error']}",
                        )
                    if first_event is None and chunk.get("choices"):
                        first_event = time.perf_counter() - start
                    if _chunk_text(chunk):
                        chunks_with_text += 1
                        if ttft is None:
                            ttft = time.perf_counter() - start
                    if any(c.get("finish_reason") for c in chunk.get("choices") or []):
                        saw_finish_reason = True
                    if chunk.get("usage"):
                        usage_tokens = int(chunk["usage"].get("completion_tokens", 0))
                        prompt_tokens = int(chunk["usage"].get("prompt_tokens", 0))
            end = time.perf_counter()
            tokens = usage_tokens if usage_tokens is not None else chunks_with_text
            err = None if finished else "stream ended without finish_reason and [DONE]"
            return RequestResult(
                200,
                start,
                ttft,
                end - start,
                tokens,
                finished,
                error=err,
                prompt_tokens=prompt_tokens,
                chunks=chunks_with_text,
                events=events,
                bytes=nbytes,
                first_event_s=first_event,
            )
    except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError, OSError) as exc:
        return RequestResult(
            0, start, ttft, time.perf_counter() - start, 0, False, error=f"{type(exc).__name__}: {exc}"
        )


async def run_load(cfg: LoadConfig) -> LoadResult:
    results: list[RequestResult] = []
    in_flight = 0
    max_in_flight = 0
    sent = 0
    body = request_body(cfg)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    t0 = time.perf_counter()
    deadline = t0 + cfg.duration_s

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal in_flight, max_in_flight, sent
        while time.perf_counter() < deadline:
            if cfg.max_requests is not None and sent >= cfg.max_requests:
                return
            sent += 1
            in_flight += 1
            max_in_flight = max(max_in_flight, in_flight)
            try:
                results.append(await stream_request(session, cfg, body))
            finally:
                in_flight -= 1

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(cfg.concurrency)))
    wall = time.perf_counter() - t0
    statuses: Counter[int] = Counter(r.status for r in results)
    return LoadResult(cfg, results, wall, max_in_flight, statuses)


async def wait_ready(base_url: str, timeout_s: float = 180.0, path: str = "/v1/models") -> None:
    """Wait until GET base_url+path answers 200."""
    deadline = time.monotonic() + timeout_s
    last = ""
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(
                    base_url.rstrip("/") + path, timeout=aiohttp.ClientTimeout(total=5)
                ) as r:
                    if r.status == 200:
                        return
                    last = f"HTTP {r.status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                last = type(exc).__name__
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{base_url}{path} not ready after {timeout_s}s (last: {last})")


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured markdown table (also readable as plain text)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("-c", "--concurrency", type=int, default=16)
    ap.add_argument("-d", "--duration", type=float, default=20.0)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt", default=LoadConfig.prompt)
    ap.add_argument("--chat", action="store_true")
    ap.add_argument("--no-ignore-eos", action="store_true")
    args = ap.parse_args()
    cfg = LoadConfig(
        base_url=args.url,
        model=args.model,
        concurrency=args.concurrency,
        duration_s=args.duration,
        max_tokens=args.max_tokens,
        prompt=args.prompt,
        chat=args.chat,
        ignore_eos=not args.no_ignore_eos,
    )
    result = asyncio.run(run_load(cfg))
    print(json.dumps(result.summary(), indent=1))
    for r in result.errors[:5]:
        print(f"error: status={r.status} {r.error}")


if __name__ == "__main__":
    main()
