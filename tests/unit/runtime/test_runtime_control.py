"""Auth, admission (429), timeouts, client disconnects and draining, over the synthetic engine."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from runtime_support import parse_metrics, wait_for

from infera_runtime.admission import Admission
from infera_runtime.errors import RateLimitError

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}
SLOW = {"token_latency_s": 0.01}


async def test_api_keys(server_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keyfile = tmp_path / "keys"
    keyfile.write_text("# comment\n\nsk-first-secret-key\nsk-second-secret-key\n")
    caplog.set_level(logging.DEBUG)
    async with server_factory(api_key_file=keyfile) as s:
        cl = s.client
        r = await cl.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"
        r = await cl.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-wrong"})
        assert r.status_code == 401
        r = await cl.get("/v1/models", headers={"Authorization": "Basic sk-first-secret-key"})
        assert r.status_code == 401
        for key in ("sk-first-secret-key", "sk-second-secret-key"):
            r = await cl.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200
        # Probes and metrics need no key.
        assert (await cl.get("/health/ready")).status_code == 200
        assert (await cl.get("/metrics")).status_code == 200
    from infera_runtime.logs import JsonFormatter

    fmt = JsonFormatter()
    text = "\n".join(fmt.format(rec) for rec in caplog.records)
    assert "sk-first-secret-key" not in text and "sk-wrong" not in text


async def test_admission_full_gives_429_with_retry_after(server_factory: Any) -> None:
    async with server_factory(max_inflight=1, max_queue=1, engine_args=SLOW) as s:
        body = {"model": "tiny", "prompt": "a", "max_tokens": 40}
        running = asyncio.create_task(s.client.post("/v1/completions", json=body))
        await wait_for(lambda: s.runtime.admission.inflight == 1)
        queued = asyncio.create_task(s.client.post("/v1/completions", json=body))
        await wait_for(lambda: s.runtime.admission.queued == 1)
        m = parse_metrics((await s.client.get("/metrics")).text)
        assert m["infera_requests_in_flight"] == 1 and m["infera_requests_queued"] == 1
        r = await s.client.post("/v1/completions", json=body)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
        # The queued request is served once the running one finishes.
        assert (await running).status_code == 200
        assert (await queued).status_code == 200
        m = parse_metrics((await s.client.get("/metrics")).text)
        assert m['infera_requests_total{endpoint="/v1/completions",status="429"}'] == 1
        assert m["infera_requests_in_flight"] == 0 and m["infera_requests_queued"] == 0


async def test_timeout_aborts_request(server_factory: Any) -> None:
    async with server_factory(request_timeout_s=0.3, engine_args=SLOW) as s:
        r = await s.client.post("/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 1000})
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "request_timeout"
        assert s.engine.stats().running == 0
        # Streaming: the stream ends with an error event, then [DONE].
        async with s.client.stream(
            "POST",
            "/v1/completions",
            json={"model": "tiny", "prompt": "a", "max_tokens": 1000, "stream": True},
        ) as resp:
            assert resp.status_code == 200
            events = [line[6:] async for line in resp.aiter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "request_timeout"
        assert len(events) > 3  # some tokens came first
        assert s.engine.stats().running == 0
        assert s.runtime.admission.inflight == 0


async def test_timeout_while_queued(server_factory: Any) -> None:
    async with server_factory(request_timeout_s=0.3, max_inflight=1) as s:
        await s.runtime.admission.acquire()  # the only slot is taken
        r = await s.client.post("/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 1})
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "request_timeout"
        assert s.runtime.admission.queued == 0
        s.runtime.admission.release()
        r = await s.client.post("/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 1})
        assert r.status_code == 200
        assert s.runtime.admission.inflight == 0


async def test_disconnect_aborts_streaming_request(server_factory: Any) -> None:
    async with server_factory(engine_args=SLOW) as s:
        async with (
            httpx.AsyncClient(base_url=s.url) as other,
            other.stream(
                "POST", "/v1/chat/completions", json={**CHAT, "max_tokens": 3000, "stream": True}
            ) as resp,
        ):
            n = 0
            async for line in resp.aiter_lines():
                n += line.startswith("data: ")
                if n >= 5:
                    break
            assert s.engine.stats().running == 1
        # Client gone: the engine request is aborted and the admission slot freed.
        await wait_for(lambda: s.engine.stats().running == 0 and s.runtime.admission.inflight == 0)


async def test_disconnect_aborts_non_streaming_request(server_factory: Any) -> None:
    async with server_factory(engine_args=SLOW) as s:
        async with httpx.AsyncClient(base_url=s.url) as other:
            task = asyncio.create_task(
                other.post("/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 3000})
            )
            await wait_for(lambda: s.engine.stats().running == 1)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await wait_for(lambda: s.engine.stats().running == 0 and s.runtime.admission.inflight == 0)
        await wait_for(lambda: 'status="499"' in "".join(s.runtime.metrics.render().decode().splitlines()))


async def test_queued_request_disconnect_leaves_queue(server_factory: Any) -> None:
    async with server_factory(max_inflight=1, engine_args=SLOW) as s:
        body = {"model": "tiny", "prompt": "a", "max_tokens": 30}
        running = asyncio.create_task(s.client.post("/v1/completions", json=body))
        await wait_for(lambda: s.runtime.admission.inflight == 1)
        async with httpx.AsyncClient(base_url=s.url) as other:
            queued = asyncio.create_task(other.post("/v1/completions", json=body))
            await wait_for(lambda: s.runtime.admission.queued == 1)
            queued.cancel()
            await asyncio.gather(queued, return_exceptions=True)
        await wait_for(lambda: s.runtime.admission.queued == 0)
        assert (await running).status_code == 200
        assert s.runtime.admission.inflight == 0


async def test_drain_refuses_new_and_finishes_in_flight(server_factory: Any) -> None:
    async with server_factory(engine_args=SLOW) as s:
        async with s.client.stream(
            "POST", "/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 30, "stream": True}
        ) as resp:
            drain = asyncio.create_task(s.runtime.drain(10))
            await wait_for(lambda: s.runtime.draining)
            assert (await s.client.get("/health/ready")).status_code == 503
            assert (await s.client.get("/health/live")).status_code == 200
            r = await s.client.post("/v1/completions", json={"model": "tiny", "prompt": "a"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
            events = [line[6:] async for line in resp.aiter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
        assert await drain is True


async def test_drain_aborts_after_grace(server_factory: Any) -> None:
    async with server_factory(engine_args=SLOW) as s:
        task = asyncio.create_task(
            s.client.post("/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 3000})
        )
        await wait_for(lambda: s.engine.stats().running == 1)
        assert await s.runtime.drain(0.2) is False
        r = await task
        assert r.status_code == 503
        assert s.engine.stats().running == 0


async def test_admission_fifo_and_forget() -> None:
    changes: list[tuple[int, int]] = []
    adm = Admission(1, 2, lambda i, q: changes.append((i, q)))
    await adm.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await adm.acquire()
        order.append(i)

    t1 = asyncio.create_task(waiter(1))
    t2 = asyncio.create_task(waiter(2))
    await wait_for(lambda: adm.queued == 2)
    with pytest.raises(RateLimitError):
        adm.new_waiter()
    t1.cancel()
    await asyncio.gather(t1, return_exceptions=True)
    assert adm.queued == 1
    adm.release()
    await t2
    assert order == [2]
    assert adm.inflight == 1
    adm.release()
    assert adm.inflight == 0
    await asyncio.wait_for(adm.wait_idle(), 1)
    assert changes[-1] == (0, 0)


async def test_slot_handed_to_a_queued_call_as_it_is_cancelled_is_released() -> None:
    """The slot a finishing request hands to a queued one comes back even when the queued one is
    cancelled (here: timed out) before it runs."""
    from infera_runtime.app import InferaApp, Runtime
    from infera_runtime.engine import make_backend
    from infera_runtime.settings import RuntimeSettings

    settings = RuntimeSettings(model="/models/tiny", engine="synthetic", max_inflight=1, max_queue=1)
    runtime = Runtime(settings, make_backend(settings))
    await runtime.load_engine()
    app = InferaApp(runtime)
    assert runtime.admission.new_waiter() is None  # someone else holds the only slot
    sent: list[dict[str, Any]] = []
    request = [{"type": "http.request", "body": json.dumps(CHAT).encode(), "more_body": False}]

    async def receive() -> dict[str, Any]:
        if request:
            return request.pop()
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "path": "/v1/chat/completions", "method": "POST", "headers": []}
    task = asyncio.create_task(app(scope, receive, send))
    await wait_for(lambda: runtime.admission.queued == 1)
    runtime.admission.release()  # the slot passes to the queued call ...
    runtime.cancel_all("timeout")  # ... which times out before it resumes
    await task
    assert sent[0]["status"] == 504
    assert runtime.admission.inflight == 0 and runtime.admission.queued == 0
