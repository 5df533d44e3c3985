"""The HTTP layer: what the runtime adds around the OpenAI API that the backend serves.

The OpenAI API itself (every route, request model, error body and stream) is the backend's
ASGI app: with ``engine="vllm"`` that is vLLM's own OpenAI server app, built in-process over
the same engine (:mod:`.engine.vllm_engine`). This module is one pure ASGI app in front of it
that adds, per request, in this order:

* a request id (``X-Request-Id`` accepted when well-formed, else generated; echoed, logged, and
  passed to the backend so vLLM's request ids carry it);
* probes and metrics, answered here: ``/health/live|startup|ready``, ``/health`` (what vLLM's
  ecosystem polls: 200 only while ready, so draining pods leave routers at once), ``/metrics``;
* the API key (:mod:`.auth`) on everything but probes, ``/metrics``, ``/version`` and ``/ping``;
* readiness: 503 while the model loads, the engine is unhealthy or the server drains;
* for ``POST`` requests: the body, bounded in size (413), in time (408) and declared as JSON
  (415); then admission (429 with ``Retry-After`` when running and queued are full; FIFO
  queue otherwise), so templating and tokenizing (vLLM's, which refuses a prompt whose length in
  characters alone exceeds the context before tokenizing it) are bounded by admission too;
* ``request_timeout_s`` (queue wait plus generation) and shutdown: the backend sees the request
  as a client disconnect (its ``receive`` answers ``http.disconnect``), which is how vLLM
  aborts an engine request; the client gets a 504/503, or, mid-stream, an error event and
  ``data: [DONE]``;
* request counts, durations and one JSON access-log line per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

from .admission import Admission
from .auth import ApiKeys
from .engine.base import Backend
from .errors import (
    BodyTimeoutError,
    InferaError,
    InternalError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ServiceUnavailableError,
    UnsupportedMediaTypeError,
)
from .logs import request_id_var
from .metrics import CONTENT_TYPE, Metrics
from .settings import RuntimeSettings

log = logging.getLogger("infera.http")
access_log = logging.getLogger("infera.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
CancelReason = Literal["disconnect", "timeout", "shutdown"]

# Endpoints counted in infera_requests_total under their own label (others: "other").
API_ENDPOINTS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/messages",
        "/v1/models",
        "/tokenize",
        "/detokenize",
    }
)
GENERATION_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"})
# Answered here, without an API key.
PROBE_PATHS = frozenset({"/health/live", "/health/startup", "/health/ready", "/health", "/metrics"})
# Without an API key: the probes, and two routes the backend answers.
OPEN_PATHS = PROBE_PATHS | {"/version", "/ping"}
_RID_OK = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")
JSON_TYPE = b"application/json"
DONE = b"data: [DONE]\n\n"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class Call:
    """One admitted (or queued) API request; :meth:`cancel` ends it (timeout, shutdown, disconnect)."""

    __slots__ = ("cancelled", "reason", "waiter")

    def __init__(self) -> None:
        self.reason: CancelReason | None = None
        self.cancelled = asyncio.Event()
        self.waiter: asyncio.Future[None] | None = None

    def cancel(self, reason: CancelReason) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        self.cancelled.set()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.cancel()

    def error(self) -> InferaError:
        if self.reason == "timeout":
            return RequestTimeoutError("The request did not finish within the server's request timeout.")
        return ServiceUnavailableError("The server is shutting down.", code="draining")


class Runtime:
    """Everything one server process holds: settings, backend, admission, metrics, lifecycle."""

    def __init__(self, settings: RuntimeSettings, backend: Backend, api_keys: ApiKeys | None = None) -> None:
        self.settings = settings
        self.backend = backend
        self.api_keys = api_keys
        self.loaded = False
        self.draining = False
        self.load_error: str | None = None
        self.metrics = Metrics(self._engine_stats)
        self.admission = Admission(settings.max_inflight, settings.max_queue, self._on_admission)
        self.calls: set[Call] = set()
        self.metrics.engine_ready.set(0)

    def _engine_stats(self) -> Any:
        return self.backend.stats() if self.loaded else None

    def _on_admission(self, inflight: int, queued: int) -> None:
        self.metrics.in_flight.set(inflight)
        self.metrics.queued.set(queued)

    async def load_engine(self) -> None:
        try:
            await self.backend.start(self.metrics)
        except BaseException as exc:
            self.load_error = f"{exc.__class__.__name__}: {exc}"
            raise
        self.loaded = True
        self.metrics.engine_ready.set(1 if self.ready() else 0)

    def healthy(self) -> bool:
        return self.load_error is None and self.backend.is_healthy()

    def ready(self) -> bool:
        return self.loaded and not self.draining and self.healthy()

    def begin_drain(self) -> None:
        if not self.draining:
            self.draining = True
            self.metrics.engine_ready.set(0)
            log.info(
                "draining: refusing new requests",
                extra={"in_flight": self.admission.inflight, "queued": self.admission.queued},
            )

    def cancel_all(self, reason: CancelReason) -> int:
        calls = list(self.calls)
        for call in calls:
            call.cancel(reason)
        return len(calls)

    async def drain(self, grace_s: float) -> bool:
        """Wait up to ``grace_s`` for admitted requests to finish; abort the rest. True if all finished."""
        self.begin_drain()
        try:
            await asyncio.wait_for(self.admission.wait_idle(), grace_s)
            return True
        except TimeoutError:
            n = self.cancel_all("shutdown")
            log.warning("shutdown grace period over: aborted %d requests", n)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.admission.wait_idle(), 5.0)
            return False

    def check_api(self, headers: dict[bytes, bytes]) -> None:
        """Raise the right error unless an API request may proceed (auth, then readiness)."""
        if self.api_keys is not None:
            auth = headers.get(b"authorization")
            self.api_keys.check(auth.decode("latin-1") if auth is not None else None)
        if not self.ready():
            if self.draining:
                raise ServiceUnavailableError("The server is shutting down.", code="draining")
            if not self.loaded:
                raise ServiceUnavailableError("The model is still loading.", code="loading")
            raise ServiceUnavailableError("The engine is not healthy.", code="engine_unhealthy")


# ---------------------------------------------------------------------------------------- bodies
def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_body(receive: Receive, headers: dict[bytes, bytes], settings: RuntimeSettings) -> bytes:
    """The request body: declared as JSON (or undeclared), bounded in size and in the time the
    client may take to send it (a slow client never holds a connection longer)."""
    content_type = headers.get(b"content-type")
    if content_type is not None and not _is_json(content_type.decode("latin-1")):
        raise UnsupportedMediaTypeError(
            f"Unsupported Content-Type {content_type.decode('latin-1')!r}: send the body as application/json."
        )
    limit = settings.max_body_bytes
    length = headers.get(b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLargeError(
            f"The request body ({int(length)} bytes) is larger than the limit of {limit} bytes."
        )
    timeout_s = min(settings.body_read_timeout_s, settings.request_timeout_s)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(f"The request body is larger than the limit of {limit} bytes.")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise BodyTimeoutError(f"The request body was not received within {timeout_s:g} s.") from None
    return b"".join(chunks)


class _ClientGone(Exception):
    """The client disconnected before its request was handed to the backend."""


# ---------------------------------------------------------------------------------------- errors
def to_infera_error(exc: BaseException) -> InferaError:
    """The one mapping from an exception raised in this layer to what the client sees."""
    if isinstance(exc, InferaError):
        return exc
    log.error("unhandled error", exc_info=exc)
    return InternalError("The server had an error while processing your request.")


async def send_error(send: Send, exc: BaseException) -> None:
    err = to_infera_error(exc)
    headers = [
        (b"content-type", JSON_TYPE),
        *((k.lower().encode(), v.encode()) for k, v in err.headers.items()),
    ]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": dumps(err.body())})


def openai_error_body(status: int, body: bytes) -> bytes:
    """``body`` unless it is a JSON object without OpenAI's ``error`` member (FastAPI's
    ``{"detail": ...}`` for an unknown route, a wrong method or an unparsable body): then the same
    message in OpenAI's error shape, with vLLM's conventions (``code`` is the status)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if not isinstance(parsed, dict) or "error" in parsed:
        return body
    detail = parsed.get("detail", parsed)
    message = detail if isinstance(detail, str) else json.dumps(detail)
    kind = {404: "NotFoundError", 405: "MethodNotAllowedError"}.get(status, "BadRequestError")
    return dumps({"error": {"message": message, "type": kind, "param": None, "code": status}})


def shape_errors(send: Send) -> Send:
    """``send`` for a backend response: an error response's body passes :func:`openai_error_body`."""
    start: Message | None = None
    parts: list[bytes] = []

    async def shaped(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and message["status"] >= 400:
            start = message  # held until its body is complete
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        parts.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        headers = [(k, v) for k, v in start.get("headers", ()) if k.lower() != b"content-length"]
        body = openai_error_body(start["status"], b"".join(parts))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return shaped


async def send_json(send: Send, status: int, body: bytes, content_type: bytes = JSON_TYPE) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]}
    )
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------- the app
class InferaApp:
    """The runtime's ASGI app (see the module docstring)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan_noop(receive, send)
            return
        if kind != "http":  # websockets (vLLM's realtime API): auth and readiness, then the backend
            headers = dict(scope.get("headers", ()))
            try:
                self.runtime.check_api(headers)
            except InferaError:
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.runtime.backend.app(scope, receive, send)
            return
        rid = None
        headers = {}
        for name, value in scope.get("headers", ()):
            headers[name] = value
            if name == b"x-request-id":
                text = value.decode("latin-1").strip()
                if _RID_OK.match(text):
                    rid = text
        if rid is None:
            rid = uuid.uuid4().hex
            scope["headers"] = [*scope.get("headers", ()), (b"x-request-id", rid.encode())]
        token = request_id_var.set(rid)
        rid_header = (b"x-request-id", rid.encode())
        status = 0
        summary: dict[str, Any] = {}
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *(h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"),
                    rid_header,
                ]
            await send(message)

        try:
            await self._route(scope, receive, send_with_id, headers, summary)
        finally:
            self._done(scope, status, time.perf_counter() - t0, summary)
            request_id_var.reset(token)

    async def _route(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes], summary: dict[str, Any]
    ) -> None:
        runtime = self.runtime
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        if path in PROBE_PATHS:
            await self._probe(path, send)
            return
        try:
            if path not in OPEN_PATHS:
                runtime.check_api(headers)
            elif not runtime.loaded:  # /version, /ping: answered by the backend once it exists
                raise ServiceUnavailableError("The model is still loading.", code="loading")
        except InferaError as exc:
            await send_error(send, exc)
            return
        if method != "POST":
            await runtime.backend.app(scope, receive, shape_errors(send))
            return
        try:
            body = await read_body(receive, headers, runtime.settings)
        except _ClientGone:
            summary["cancelled"] = "disconnect"
            return
        except InferaError as exc:
            await send_error(send, exc)
            return
        await self._admitted(scope, receive, send, body, summary)

    async def _probe(self, path: str, send: Send) -> None:
        runtime = self.runtime
        if path == "/metrics":
            await send_json(send, 200, runtime.metrics.render(), CONTENT_TYPE.encode())
            return
        if path == "/health":  # vLLM's: an empty 200 while it can serve
            ok = runtime.ready()
            await send_json(send, 200 if ok else 503, b"" if ok else dumps({"status": "unavailable"}))
            return
        what = path.rsplit("/", 1)[-1]
        ok = {"live": runtime.healthy, "startup": lambda: runtime.loaded, "ready": runtime.ready}[what]()
        await send_json(
            send, 200 if ok else 503, dumps({"status": "ok" if ok else "unavailable", "probe": what})
        )

    async def _admitted(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, summary: dict[str, Any]
    ) -> None:
        runtime = self.runtime
        loop = asyncio.get_running_loop()
        call = Call()
        timer = loop.call_later(runtime.settings.request_timeout_s, call.cancel, "timeout")
        runtime.calls.add(call)
        admitted = False
        try:
            try:
                fut = runtime.admission.new_waiter()  # raises RateLimitError (429) when full
            except InferaError as exc:
                await send_error(send, exc)
                return
            if fut is None:
                admitted = True
            else:
                admitted = await self._queue(call, fut, receive)
            if call.reason is not None:  # gone while queued (or just as its slot came)
                summary["cancelled"] = call.reason
                if call.reason != "disconnect":
                    await send_error(send, call.error())
                return
            await self._run_backend(scope, receive, send, body, call, summary)
        finally:
            timer.cancel()
            runtime.calls.discard(call)
            if admitted:
                runtime.admission.release()

    async def _queue(self, call: Call, fut: asyncio.Future[None], receive: Receive) -> bool:
        """Wait for an admission slot: True once it holds one (the caller releases it), False if the
        call was cancelled (timeout, shutdown, the client left) while still queued."""

        async def watch() -> None:
            while True:
                if (await receive())["type"] == "http.disconnect":
                    call.cancel("disconnect")
                    return

        watcher = asyncio.get_running_loop().create_task(watch())
        call.waiter = fut
        try:
            await fut
            return True
        except asyncio.CancelledError:
            self.runtime.admission.forget(fut)
            if call.reason is not None:
                return False
            raise
        finally:
            call.waiter = None
            watcher.cancel()

    async def _run_backend(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, call: Call, summary: dict[str, Any]
    ) -> None:
        """Hand the request to the backend; on cancel it sees a disconnect, the client our error."""
        pending: list[Message] | None = [{"type": "http.request", "body": body, "more_body": False}]
        started = completed = stream = False

        async def backend_receive() -> Message:
            nonlocal pending
            if pending:
                message = pending.pop()
                pending = None
                return message
            if call.reason is not None:
                return {"type": "http.disconnect"}
            real = asyncio.ensure_future(receive())
            gone = asyncio.ensure_future(call.cancelled.wait())
            try:
                await asyncio.wait((real, gone), return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            if real.done():
                message = real.result()
                if message["type"] == "http.disconnect":
                    call.cancel("disconnect")
                return message
            real.cancel()
            return {"type": "http.disconnect"}

        shaped = shape_errors(send)

        async def backend_send(message: Message) -> None:
            nonlocal started, completed, stream
            if call.reason is not None:
                raise OSError("request cancelled")  # the backend stops writing, as on a broken connection
            if message["type"] == "http.response.start":
                started = True
                for k, v in message.get("headers", ()):
                    if k.lower() == b"content-type" and v.startswith(b"text/event-stream"):
                        stream = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                completed = True
            await shaped(message)

        try:
            await self.runtime.backend.app(scope, backend_receive, backend_send)
        except OSError:
            if call.reason is None:
                raise
        if call.reason is None or completed:
            return
        summary["cancelled"] = call.reason
        if call.reason == "disconnect":
            return
        err = call.error()
        log.info("request cancelled: %s", call.reason)
        try:
            if not started:
                await send_error(send, err)
            elif stream:
                await send(
                    {"type": "http.response.body", "body": b"data: " + dumps(err.body()) + b"\n\n" + DONE}
                )
            else:
                await send({"type": "http.response.body", "body": b""})
        except OSError:
            pass

    def _done(self, scope: Scope, status: int, duration: float, summary: dict[str, Any]) -> None:
        path = scope.get("path", "")
        code = status or 499  # no response started: the client went away first
        metrics = self.runtime.metrics
        api = path in API_ENDPOINTS or path.startswith("/v1/")
        if api:
            metrics.count_request(path if path in API_ENDPOINTS else "other", code)
            if path in GENERATION_ENDPOINTS:
                metrics.duration.observe(duration)
        extra: dict[str, Any] = {
            "method": scope.get("method"),
            "path": path,
            "status": code,
            "duration_ms": round(duration * 1000, 2),
            **summary,
        }
        level = logging.INFO if api or code >= 400 else logging.DEBUG
        if access_log.isEnabledFor(level):
            access_log.log(level, "%s %s %d", extra["method"], path, code, extra=extra)


async def _lifespan_noop(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_app(runtime: Runtime) -> InferaApp:
    return InferaApp(runtime)
