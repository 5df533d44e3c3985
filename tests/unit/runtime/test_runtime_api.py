"""The OpenAI API over the synthetic engine, through a real HTTP server and the openai client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from runtime_support import parse_metrics, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

MESSAGES: Any = [{"role": "user", "content": "hello there"}]
CHAT: dict[str, Any] = {"model": "tiny", "messages": MESSAGES}


def oai(url: str, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=kw.pop("api_key", "none"), max_retries=0, **kw)


async def sse_events(resp: Any) -> list[str]:
    events = []
    async for line in resp.aiter_lines():
        if line.startswith("data: "):
            events.append(line[6:])
    return events


async def test_chat_non_streaming(server: Any) -> None:
    c = oai(server.url)
    r = await c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=7)
    assert r.object == "chat.completion"
    assert r.model == "tiny"
    assert r.id.startswith("chatcmpl-")
    assert len(r.choices) == 1
    ch = r.choices[0]
    assert ch.message.role == "assistant"
    assert ch.message.content and len(ch.message.content.split()) == 7
    assert ch.finish_reason == "length"
    assert r.usage is not None
    assert r.usage.completion_tokens == 7
    # The synthetic template wraps the message: more prompt tokens than the two words.
    assert r.usage.prompt_tokens > 2
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7


async def test_chat_streaming_with_usage(server: Any) -> None:
    c = oai(server.url)
    stream = await c.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == ["length"]
    assert len(text.split()) == 6
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens == 6
    assert all(ch.usage is None for ch in chunks[:-1])


async def test_stream_ends_with_done_and_no_usage_by_default(server: Any) -> None:
    async with server.client.stream(
        "POST", "/v1/chat/completions", json={**CHAT, "max_tokens": 3, "stream": True}
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = await sse_events(resp)
    assert events[-1] == "[DONE]"
    bodies = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in b for b in bodies)
    assert bodies[-1]["choices"][0]["finish_reason"] == "length"


async def test_completions_non_streaming_and_streaming(server: Any) -> None:
    c = oai(server.url)
    r = await c.completions.create(model="tiny", prompt="once upon a time", max_tokens=5, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.prompt_tokens == 5  # BOS + 4 words
    stream = await c.completions.create(
        model="tiny", prompt="once upon a time", max_tokens=5, temperature=0, stream=True
    )
    parts = [ch.choices[0].text async for ch in stream if ch.choices]
    assert "".join(parts) == r.choices[0].text


async def test_completion_token_prompt(server: Any) -> None:
    r = await server.client.post(
        "/v1/completions", json={"model": "tiny", "prompt": [1, 20, 30], "max_tokens": 2}
    )
    assert r.status_code == 200
    assert r.json()["usage"]["prompt_tokens"] == 3


async def test_temperature_zero_is_greedy_not_unset(server: Any) -> None:
    c = oai(server.url)
    outs = set()
    for _ in range(3):
        r = await c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0)
        outs.add(r.choices[0].message.content)
    assert len(outs) == 1
    # n=2 at temperature 0: the same greedy text twice.
    r = await c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0, n=2)
    assert r.choices[0].message.content == r.choices[1].message.content == outs.pop()


async def test_seed_reproducible_and_sampling_varies(server: Any) -> None:
    c = oai(server.url)

    async def one(**kw: Any) -> str:
        r = await c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, **kw)
        return r.choices[0].message.content or ""

    assert await one(seed=7, temperature=1.0) == await one(seed=7, temperature=1.0)
    unseeded = {await one(temperature=1.0) for _ in range(4)}
    assert len(unseeded) > 1


async def test_n_choices(server: Any) -> None:
    c = oai(server.url)
    r = await c.completions.create(model="tiny", prompt="hi", max_tokens=4, n=3, seed=1)
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    assert r.usage is not None and r.usage.completion_tokens == 12
    stream = await c.completions.create(model="tiny", prompt="hi", max_tokens=4, n=2, seed=1, stream=True)
    texts = {0: "", 1: ""}
    async for ch in stream:
        for choice in ch.choices:
            texts[choice.index] += choice.text
    assert texts[0] == r.choices[0].text and texts[1] == r.choices[1].text


async def test_stop_sequences(server: Any) -> None:
    c = oai(server.url)
    full = await c.completions.create(model="tiny", prompt="abc", max_tokens=30, temperature=0)
    words = full.choices[0].text.split()
    stop = " " + words[3]
    first = full.choices[0].text.index(stop)
    r = await c.completions.create(model="tiny", prompt="abc", max_tokens=30, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == full.choices[0].text[:first]
    stream = await c.completions.create(
        model="tiny", prompt="abc", max_tokens=30, temperature=0, stop=stop, stream=True
    )
    streamed = "".join([ch.choices[0].text async for ch in stream if ch.choices])
    assert streamed == r.choices[0].text


async def test_models_and_request_id(server: Any) -> None:
    c = oai(server.url)
    models = await c.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    r = await server.client.get("/v1/models", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await server.client.get("/v1/models")
    assert len(r.headers["x-request-id"]) == 32
    r = await server.client.get("/v1/models", headers={"X-Request-Id": "bad id\twith spaces"})
    assert r.headers["x-request-id"] != "bad id\twith spaces"


def _assert_openai_error(
    r: Any, status: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err: dict[str, Any] = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    return err


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({**CHAT, "model": "other"}, 400, "model_not_found", "model"),
        ({**CHAT, "temperature": -1}, 400, "invalid_value", "temperature"),
        ({**CHAT, "temperature": "hot"}, 400, "invalid_value", "temperature"),
        ({**CHAT, "top_p": 0}, 400, "invalid_value", "top_p"),
        ({**CHAT, "n": 0}, 400, "invalid_value", "n"),
        ({**CHAT, "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
        ({"model": "tiny", "messages": []}, 400, "invalid_value", "messages"),
        ({"model": "tiny"}, 400, "invalid_value", "messages"),
        ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 400, None, None),
        ({**CHAT, "max_tokens": 100000}, 400, "context_length_exceeded", "max_tokens"),
        ({**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, None, "tools"),
        ({**CHAT, "logprobs": True}, 400, None, "logprobs"),
        (
            {
                "model": "tiny",
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            },
            400,
            None,
            "messages[0].content[0]",
        ),
        ({**CHAT, "stop": ["x"] * 17}, 400, None, "stop"),
    ],
)
async def test_chat_errors(
    server: Any, body: dict[str, Any], status: int, code: str | None, param: str | None
) -> None:
    r = await server.client.post("/v1/chat/completions", json=body)
    _assert_openai_error(r, status, code, param)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "tiny", "prompt": "x " * 5000, "max_tokens": 1}, 400, "context_length_exceeded"),
        ({"model": "tiny", "prompt": ["a", "b"]}, 400, None),
        ({"model": "tiny", "prompt": [1, 999999]}, 400, None),
        ({"model": "tiny", "prompt": "x", "echo": True}, 400, None),
        ({"model": "tiny", "prompt": "x", "logprobs": 2}, 400, None),
        ({"model": "tiny", "prompt": "x", "stream": "yes please"}, 400, "invalid_value"),
        ({"model": "tiny", "prompt": []}, 400, None),
    ],
)
async def test_completion_errors(server: Any, body: dict[str, Any], status: int, code: str | None) -> None:
    r = await server.client.post("/v1/completions", json=body)
    _assert_openai_error(r, status, code)


async def test_malformed_bodies_and_routes(server: Any) -> None:
    cl = server.client
    r = await cl.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    _assert_openai_error(r, 400, "invalid_json")
    r = await cl.post("/v1/chat/completions", content=b"")
    _assert_openai_error(r, 400, "invalid_json")
    r = await cl.post("/v1/chat/completions", content=b"[1, 2]")
    _assert_openai_error(r, 400, "invalid_json")
    r = await cl.post("/v1/chat/completions", content=b"\xff\xfe")
    _assert_openai_error(r, 400, "invalid_json")
    r = await cl.get("/v1/nothing")
    _assert_openai_error(r, 404, "not_found")
    r = await cl.get("/v1/chat/completions")
    _assert_openai_error(r, 405)
    # None of these is a server error.
    metrics = parse_metrics((await cl.get("/metrics")).text)
    assert not any('status="5' in k for k in metrics)


async def test_openai_client_sees_typed_errors(server: Any) -> None:
    c = oai(server.url)
    with pytest.raises(openai.BadRequestError) as exc:
        await c.chat.completions.create(model="nope", messages=MESSAGES)
    assert exc.value.code == "model_not_found"


async def test_metrics(server: Any) -> None:
    c = oai(server.url)
    await c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4)
    stream = await c.completions.create(model="tiny", prompt="a b", max_tokens=3, stream=True)
    async for _ in stream:
        pass
    await server.client.post("/v1/chat/completions", json={**CHAT, "model": "x"})
    await server.client.get("/health/ready")
    text = (await server.client.get("/metrics")).text
    m = parse_metrics(text)
    assert m['infera_requests_total{endpoint="/v1/chat/completions",status="200"}'] == 1
    assert m['infera_requests_total{endpoint="/v1/completions",status="200"}'] == 1
    assert m['infera_requests_total{endpoint="/v1/chat/completions",status="400"}'] == 1
    assert not any("/health" in k for k in m)  # probes are not API requests
    assert m["infera_generation_tokens_total"] == 7
    assert m["infera_prompt_tokens_total"] > 3
    assert m["infera_time_to_first_token_seconds_count"] == 2
    assert m["infera_time_per_output_token_seconds_count"] == 2
    assert m["infera_request_duration_seconds_count"] == 3
    assert m["infera_requests_in_flight"] == 0
    assert m["infera_requests_queued"] == 0
    assert m["infera_engine_ready"] == 1
    assert m["infera_kv_cache_usage_ratio"] == 0
    assert m["infera_engine_requests_running"] == 0
    for name in ("infera_time_to_first_token_seconds", "infera_request_duration_seconds"):
        assert f"# TYPE {name} histogram" in text


async def test_in_flight_and_kv_gauges_while_running(server_factory: Any) -> None:
    async with server_factory(engine_args={"token_latency_s": 0.01}) as s:
        task = asyncio.create_task(
            s.client.post("/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 200})
        )
        await wait_for(lambda: s.runtime.admission.inflight == 1)
        m = parse_metrics((await s.client.get("/metrics")).text)
        assert m["infera_requests_in_flight"] == 1
        assert m["infera_engine_requests_running"] == 1
        assert 0 < m["infera_kv_cache_usage_ratio"] < 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await wait_for(lambda: s.engine.stats().running == 0)


async def test_health_probes(server_factory: Any) -> None:
    async with server_factory(load=False) as s:
        cl = s.client
        assert (await cl.get("/health/live")).status_code == 200
        assert (await cl.get("/health/startup")).status_code == 503
        assert (await cl.get("/health/ready")).status_code == 503
        r = await cl.post("/v1/chat/completions", json=CHAT)
        _assert_openai_error(r, 503, "loading")
        m = parse_metrics((await cl.get("/metrics")).text)
        assert m["infera_engine_ready"] == 0
        await s.runtime.load_engine()
        assert (await cl.get("/health/startup")).status_code == 200
        assert (await cl.get("/health/ready")).status_code == 200
        assert (await cl.post("/v1/chat/completions", json=CHAT)).status_code == 200
        # A dead engine: not live, not ready, API answers 503.
        s.engine._dead = True
        assert (await cl.get("/health/live")).status_code == 503
        assert (await cl.get("/health/ready")).status_code == 503
        _assert_openai_error(await cl.post("/v1/chat/completions", json=CHAT), 503, "engine_unhealthy")


async def test_body_guards_content_type_size_nesting(server_factory: Any) -> None:
    """Declared non-JSON bodies get 415, bodies over max_body_bytes 413 (before reading them when
    Content-Length says so, and while reading when it does not), JSON nested past the parser's
    recursion limit 400: never a 500."""
    async with server_factory(max_body_bytes=4096) as s:
        body = json.dumps({"model": "tiny", "messages": MESSAGES}).encode()
        r = await s.client.post("/v1/chat/completions", content=body, headers={"content-type": "text/plain"})
        _assert_openai_error(r, 415, "unsupported_media_type")
        r = await s.client.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json; charset=utf-8"}
        )
        assert r.status_code == 200, r.text
        big = b'{"model": "tiny", "prompt": "' + b"a" * 10_000 + b'"}'
        r = await s.client.post("/v1/completions", content=big, headers={"content-type": "application/json"})
        _assert_openai_error(r, 413, "payload_too_large")

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
            for _ in range(10):
                yield b"a" * 1000

        r = await s.client.post(
            "/v1/completions", content=chunked(), headers={"content-type": "application/json"}
        )
        _assert_openai_error(r, 413, "payload_too_large")
    async with server_factory() as s:
        deep = b'{"model": "tiny", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        r = await s.client.post(
            "/v1/chat/completions", content=deep, headers={"content-type": "application/json"}
        )
        _assert_openai_error(r, 400, "invalid_json")
        assert (
            await s.client.post("/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES})
        ).status_code == 200


async def test_a_slow_body_gets_408_and_frees_the_connection(server_factory: Any) -> None:
    async with server_factory(body_read_timeout_s=0.5) as s:
        host, port = s.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"model": '
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.read(4096), 10)
        writer.close()
        assert head.startswith(b"HTTP/1.1 408"), head[:200]
        assert b"body_timeout" in head
