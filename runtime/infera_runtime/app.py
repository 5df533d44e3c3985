"""The HTTP layer: a FastAPI app with thin routes over :mod:`.serving`.

Routes read the body, check readiness and the API key, and hand the JSON to the serving layer;
every exception becomes an OpenAI error body in one place, :func:`to_infera_error`. A pure ASGI
middleware (no per-chunk work beyond one function call) sets the request id (``X-Request-Id``,
accepted and echoed), counts API requests, times them and writes one access-log line each.
A client that disconnects is noticed by a listener on the ASGI ``receive`` channel, which
cancels the call, so the engine aborts the request (streaming or not).
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
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from .admission import Admission
from .auth import ApiKeys
from .engine.base import Engine
from .errors import (
    BodyTimeoutError,
    InferaError,
    InternalError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    UnsupportedMediaTypeError,
    validation_error,
)
from .logs import request_id_var
from .metrics import CONTENT_TYPE, Metrics
from .serving import Call, Serving, Stream, dumps
from .settings import RuntimeSettings

log = logging.getLogger("infera.http")
access_log = logging.getLogger("infera.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

API_ENDPOINTS = {"/v1/chat/completions", "/v1/completions", "/v1/models"}
GENERATION_ENDPOINTS = {"/v1/chat/completions", "/v1/completions"}
_RID_OK = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")
JSON = "application/json"


class Runtime:
    """Everything one server process holds: settings, engine, admission, metrics, lifecycle."""

    def __init__(self, settings: RuntimeSettings, engine: Engine, api_keys: ApiKeys | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.api_keys = api_keys
        self.loaded = False
        self.draining = False
        self.load_error: str | None = None
        self.metrics = Metrics(self._engine_stats)
        self.admission = Admission(settings.max_inflight, settings.max_queue, self._on_admission)
        self.serving = Serving(
            model_name=settings.model_name,
            engine=engine,
            admission=self.admission,
            metrics=self.metrics,
            request_timeout_s=settings.request_timeout_s,
        )
        self.metrics.engine_ready.set(0)

    def _engine_stats(self) -> Any:
        return self.engine.stats() if self.loaded else None

    def _on_admission(self, inflight: int, queued: int) -> None:
        self.metrics.in_flight.set(inflight)
        self.metrics.queued.set(queued)

    async def load_engine(self) -> None:
        try:
            await self.engine.start()
        except BaseException as exc:
            self.load_error = f"{exc.__class__.__name__}: {exc}"
            raise
        self.loaded = True
        self.metrics.engine_ready.set(1 if self.ready() else 0)

    def healthy(self) -> bool:
        return self.load_error is None and self.engine.is_healthy()

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

    async def drain(self, grace_s: float) -> bool:
        """Wait up to ``grace_s`` for admitted requests to finish; abort the rest. True if all finished."""
        self.begin_drain()
        try:
            await asyncio.wait_for(self.admission.wait_idle(), grace_s)
            return True
        except TimeoutError:
            n = self.serving.cancel_all("shutdown")
            log.warning("shutdown grace period over: aborted %d requests", n)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.admission.wait_idle(), 5.0)
            return False

    def check_api(self, request: Request) -> None:
        """Raise the right error unless an API request may proceed (auth, then readiness)."""
        if self.api_keys is not None:
            self.api_keys.check(request.headers.get("authorization"))
        if not self.ready():
            if self.draining:
                raise ServiceUnavailableError("The server is shutting down.", code="draining")
            if not self.loaded:
                raise ServiceUnavailableError("The model is still loading.", code="loading")
            raise ServiceUnavailableError("The engine is not healthy.", code="engine_unhealthy")


def to_infera_error(exc: BaseException) -> InferaError:
    """The one mapping from any exception to an error the client sees."""
    if isinstance(exc, InferaError):
        return exc
    if isinstance(exc, RequestValidationError):
        return validation_error(exc.errors())
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 404:
            return NotFoundError("Not found.")
        if exc.status_code == 405:
            return MethodNotAllowedError("Method not allowed.")
        if 400 <= exc.status_code < 500:
            return InvalidRequestError(str(exc.detail))
        return InternalError(str(exc.detail))
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        return InvalidRequestError(
            f"We could not parse the JSON body of your request. ({exc})", code="invalid_json"
        )
    log.error("unhandled error", exc_info=exc)
    return InternalError("The server had an error while processing your request.")


def error_response(exc: BaseException) -> Response:
    err = to_infera_error(exc)
    return Response(dumps(err.body()), status_code=err.status, headers=err.headers, media_type=JSON)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def _read_body(request: Request, max_bytes: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise PayloadTooLargeError(
            f"The request body ({length} bytes) is larger than the limit of {max_bytes} bytes."
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLargeError(f"The request body is larger than the limit of {max_bytes} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_json(request: Request, settings: RuntimeSettings) -> Any:
    """The request's JSON body: declared as JSON (or undeclared), bounded in size and in the time
    the client may take to send it (a slow client never holds a connection longer), parsed without
    ever turning bad input into a 500."""
    content_type = request.headers.get("content-type")
    if content_type is not None and not _is_json(content_type):
        raise UnsupportedMediaTypeError(
            f"Unsupported Content-Type {content_type!r}: send the body as application/json."
        )
    timeout_s = min(settings.body_read_timeout_s, settings.request_timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            body = await _read_body(request, settings.max_body_bytes)
    except TimeoutError:
        raise BodyTimeoutError(f"The request body was not received within {timeout_s:g} s.") from None
    if not body:
        raise InvalidRequestError("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        return json.loads(body)
    except RecursionError:
        raise InvalidRequestError("The JSON body is nested too deeply.", code="invalid_json") from None


def _watch_disconnect(receive: Receive, call: Call) -> asyncio.Task[None]:
    """Cancel ``call`` when the client goes away (the listener is cancelled once the reply is sent)."""

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                call.cancel("disconnect")
                return

    return asyncio.get_running_loop().create_task(watch())


class SSEResponse(Response):
    """Streams a :class:`Stream`; always closes it (so the request is released and aborted)."""

    media_type = "text/event-stream"

    def __init__(self, stream: Stream, watcher: asyncio.Task[None]) -> None:
        self.stream = stream
        self.watcher = watcher
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away while we were sending
        finally:
            self.watcher.cancel()
            await self.stream.aclose()


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(title="infera runtime", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runtime = runtime
    serving = runtime.serving

    async def generation(
        request: Request, handler: Callable[[Call, Any], Awaitable[bytes | Stream]]
    ) -> Response:
        try:
            runtime.check_api(request)
            body = await _read_json(request, runtime.settings)
        except Exception as exc:
            return error_response(exc)
        call = serving.new_call(request_id_var.get() or "")
        request.scope.setdefault("state", {})["infera_call"] = call
        watcher = _watch_disconnect(request.receive, call)
        try:
            reply = await handler(call, body)
        except Exception as exc:
            watcher.cancel()
            return error_response(exc)
        except BaseException:
            watcher.cancel()
            raise
        if isinstance(reply, Stream):
            return SSEResponse(reply, watcher)
        watcher.cancel()
        return Response(reply, media_type=JSON)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generation(request, serving.chat)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generation(request, serving.completions)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            runtime.check_api(request)
        except Exception as exc:
            return error_response(exc)
        return Response(serving.models(), media_type=JSON)

    def probe(ok: bool, what: str) -> Response:
        return Response(
            dumps({"status": "ok" if ok else "unavailable", "probe": what}),
            status_code=200 if ok else 503,
            media_type=JSON,
        )

    @app.get("/health/live")
    async def live() -> Response:
        return probe(runtime.healthy(), "live")

    @app.get("/health/startup")
    async def startup() -> Response:
        return probe(runtime.loaded, "startup")

    @app.get("/health/ready")
    async def ready() -> Response:
        return probe(runtime.ready(), "ready")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)

    async def http_error(request: Request, exc: Exception) -> Response:
        return error_response(exc)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, http_error)
    app.add_exception_handler(Exception, http_error)
    app.add_middleware(AccessMiddleware, runtime=runtime)
    return app


class AccessMiddleware:
    """Request id, API request metrics and one access-log line per request."""

    def __init__(self, app: Any, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                text = value.decode("latin-1").strip()
                if _RID_OK.match(text):
                    rid = text
                break
        if rid is None:
            rid = uuid.uuid4().hex
        token = request_id_var.set(rid)
        rid_header = (b"x-request-id", rid.encode())
        status = 0
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._done(scope, status, time.perf_counter() - t0)
            request_id_var.reset(token)

    def _done(self, scope: Scope, status: int, duration: float) -> None:
        path = scope.get("path", "")
        code = status or 499  # no response started: the client went away first
        metrics = self.runtime.metrics
        api = path in API_ENDPOINTS
        if api:
            metrics.count_request(path, code)
            if path in GENERATION_ENDPOINTS:
                metrics.duration.observe(duration)
        extra: dict[str, Any] = {
            "method": scope.get("method"),
            "path": path,
            "status": code,
            "duration_ms": round(duration * 1000, 2),
        }
        call = (scope.get("state") or {}).get("infera_call")
        if call is not None:
            extra.update(call.summary())
        level = logging.INFO if api or code >= 400 else logging.DEBUG
        if access_log.isEnabledFor(level):
            access_log.log(level, "%s %s %d", extra["method"], path, code, extra=extra)
