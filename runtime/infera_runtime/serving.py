"""The synthetic backend: a small OpenAI subset over the synthetic engine, for tests and demos.

With ``engine="synthetic"`` no model is loaded: :class:`SyntheticBackend` serves
``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models`` (text only; no tools, logprobs
or structured outputs) over :class:`~.engine.synthetic.SyntheticEngine`, so the runtime's own
layer (:mod:`.app`: admission, auth, timeouts, drain, metrics) can be tested and benchmarked
without a model. Production (``engine="vllm"``) serves vLLM's own OpenAI server instead.

A request goes: validate (pydantic) -> render the chat template / tokenize -> sampling options
-> engine. Streamed chunks are built from byte templates prepared once per request. A client
that disconnects (the HTTP layer's ``receive`` says ``http.disconnect``, also when the request
timed out or the server shuts down) has its engine request aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from .engine.base import Backend, Engine, EngineOutput, EngineRequest, EngineStats, SamplingOptions
from .errors import (
    ContextLengthExceededError,
    InferaError,
    InternalError,
    InvalidRequestError,
    MethodNotAllowedError,
    ModelNotFoundError,
    NotFoundError,
    ServiceUnavailableError,
    validation_error,
)
from .metrics import Metrics
from .protocol import ChatCompletionRequest, CompletionRequest
from .settings import RuntimeSettings

try:  # pragma: no cover - optional
    import orjson

    def dumps(obj: Any) -> bytes:
        out: bytes = orjson.dumps(obj)
        return out

    def _escape(text: str) -> bytes:
        out: bytes = orjson.dumps(text)
        return out

except ImportError:
    _enc: Callable[[str], str] = (
        getattr(json.encoder, "c_encode_basestring", None) or json.encoder.encode_basestring
    )

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()

    def _escape(text: str) -> bytes:
        return _enc(text).encode()


log = logging.getLogger("infera.serving")

DONE = b"data: [DONE]\n\n"
MAX_STOP = 16


@dataclass(slots=True)
class _Prepared:
    kind: Literal["chat", "completion"]
    response_id: str
    prompt_ids: list[int]
    sampling: SamplingOptions
    stream: bool
    include_usage: bool
    prompt_text: str | None = None
    arrival: float = 0.0


class Stream:
    """An SSE body: iterate for byte chunks; :meth:`aclose` always closes the engine stream (abort)."""

    def __init__(self, gen: AsyncGenerator[bytes, None], close: Callable[[], Awaitable[None]]) -> None:
        self._gen = gen
        self._close = close

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._gen

    async def aclose(self) -> None:
        await self._close()


Reply = bytes | Stream


class Serving:
    def __init__(
        self,
        *,
        model_name: str,
        engine: Engine,
        metrics: Metrics,
    ) -> None:
        self.model_name = model_name
        self.engine = engine
        self.metrics = metrics
        self.created = int(time.time())
        self._model_json = _escape(model_name)

    # ------------------------------------------------------------------ endpoints
    def models(self) -> bytes:
        return dumps(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model_name,
                        "object": "model",
                        "created": self.created,
                        "owned_by": "infera",
                        "root": self.model_name,
                        "max_model_len": self.engine.max_model_len,
                    }
                ],
            }
        )

    async def chat(self, body: Any) -> Reply:
        arrival = time.monotonic()
        req = _validate(ChatCompletionRequest, body)
        self._check_model(req.model)
        _reject_unsupported(
            req,
            ("tools", "functions", "response_format", "logit_bias", "top_logprobs"),
            tool_choice=("none", None),
            function_call=("none", None),
        )
        if req.logprobs:
            raise InvalidRequestError("logprobs are not supported by this server.", param="logprobs")
        messages = [_message(i, m) for i, m in enumerate(req.messages)]
        text = await self.engine.apply_chat_template(messages)
        ids = await self.engine.tokenize(text, add_special_tokens=False)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        prep = _Prepared(
            kind="chat",
            response_id=f"chatcmpl-{uuid.uuid4().hex}",
            prompt_ids=ids,
            sampling=self._sampling(req, max_tokens, len(ids)),
            stream=req.stream,
            include_usage=bool(req.stream and req.stream_options and req.stream_options.include_usage),
            prompt_text=text,
            arrival=arrival,
        )
        return await self._run(prep)

    async def completions(self, body: Any) -> Reply:
        arrival = time.monotonic()
        req = _validate(CompletionRequest, body)
        self._check_model(req.model)
        _reject_unsupported(req, ("logit_bias", "suffix"))
        if req.echo:
            raise InvalidRequestError("echo is not supported by this server.", param="echo")
        if req.logprobs is not None:
            raise InvalidRequestError("logprobs are not supported by this server.", param="logprobs")
        if req.best_of is not None and req.best_of != req.n:
            raise InvalidRequestError("best_of is not supported by this server.", param="best_of")
        text: str | None = None
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            if len(prompt) != 1:
                raise InvalidRequestError(
                    "Batched prompts are not supported; send one prompt per request.", param="prompt"
                )
            prompt = prompt[0]
        if isinstance(prompt, str):
            text = prompt
            ids = await self.engine.tokenize(prompt, add_special_tokens=True)
        else:
            ids = list(prompt)
            vocab = self.engine.vocab_size
            if not ids:
                raise InvalidRequestError("The prompt is empty.", param="prompt")
            for t in ids:
                if not isinstance(t, int) or t < 0 or t >= vocab:
                    raise InvalidRequestError(f"Token id {t} is out of vocabulary.", param="prompt")
        prep = _Prepared(
            kind="completion",
            response_id=f"cmpl-{uuid.uuid4().hex}",
            prompt_ids=ids,
            sampling=self._sampling(req, req.max_tokens, len(ids)),
            stream=req.stream,
            include_usage=bool(req.stream and req.stream_options and req.stream_options.include_usage),
            prompt_text=text,
            arrival=arrival,
        )
        return await self._run(prep)

    # ------------------------------------------------------------------ helpers
    def _check_model(self, model: str) -> None:
        if model != self.model_name:
            raise ModelNotFoundError(
                f"The model '{model}' does not exist on this server; it serves '{self.model_name}'.",
                param="model",
            )

    def _sampling(
        self, req: ChatCompletionRequest | CompletionRequest, max_tokens: int | None, prompt_len: int
    ) -> SamplingOptions:
        ctx = self.engine.max_model_len
        if prompt_len == 0:
            raise InvalidRequestError("The prompt is empty.", param="prompt")
        if prompt_len >= ctx:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {ctx} tokens; the prompt has {prompt_len} tokens.",
                param="messages" if isinstance(req, ChatCompletionRequest) else "prompt",
            )
        d = self.engine.default_sampling()
        room = ctx - prompt_len
        if max_tokens is None:
            default_max = d.get("max_tokens")
            max_tokens = min(int(default_max), room) if default_max else room
        elif max_tokens > room:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {ctx} tokens; the prompt has {prompt_len} tokens "
                f"and max_tokens is {max_tokens} (at most {room} fit).",
                param="max_tokens",
            )
        stop: tuple[str, ...] = ()
        if req.stop is not None:
            stop = tuple(s for s in ([req.stop] if isinstance(req.stop, str) else req.stop) if s)
            if len(stop) > MAX_STOP:
                raise InvalidRequestError(f"At most {MAX_STOP} stop sequences are allowed.", param="stop")

        def pick(value: Any, name: str, default: Any) -> Any:
            # An explicit 0 (temperature=0: greedy) is a value, never "unset".
            return value if value is not None else d.get(name, default)

        top_k = pick(req.top_k, "top_k", 0)
        return SamplingOptions(
            max_tokens=max_tokens,
            temperature=float(pick(req.temperature, "temperature", 1.0)),
            top_p=float(pick(req.top_p, "top_p", 1.0)),
            top_k=0 if top_k is None or top_k < 0 else int(top_k),
            n=req.n,
            stop=stop,
            seed=req.seed,
            presence_penalty=float(pick(req.presence_penalty, "presence_penalty", 0.0)),
            frequency_penalty=float(pick(req.frequency_penalty, "frequency_penalty", 0.0)),
            repetition_penalty=float(d.get("repetition_penalty", 1.0)),
            min_p=float(d.get("min_p", 0.0)),
            ignore_eos=req.ignore_eos,
        )

    async def _run(self, prep: _Prepared) -> Reply:
        ereq = EngineRequest(
            request_id=prep.response_id,
            prompt_token_ids=prep.prompt_ids,
            sampling=prep.sampling,
            prompt=prep.prompt_text,
            stream=prep.stream,
        )
        outputs = self.engine.generate(ereq)  # validates eagerly: 400s are raised here
        if prep.stream:
            gen = self._sse(prep, outputs)

            async def close() -> None:
                try:
                    await gen.aclose()
                finally:
                    await outputs.aclose()

            return Stream(gen, close)
        try:
            return await self._collect(prep, outputs)
        finally:
            await outputs.aclose()

    def _observe(
        self,
        prep: _Prepared,
        completion_tokens: int,
        first: float | None,
        last: float | None,
        max_choice: int,
    ) -> None:
        tpot = None
        if first is not None and last is not None and max_choice > 1:
            tpot = (last - first) / (max_choice - 1)
        self.metrics.observe_generation(
            prompt_tokens=len(prep.prompt_ids),
            generation_tokens=completion_tokens,
            ttft_s=(first - prep.arrival) if first is not None else None,
            tpot_s=tpot,
        )

    async def _collect(self, prep: _Prepared, outputs: AsyncGenerator[EngineOutput, None]) -> bytes:
        n = prep.sampling.n
        texts: list[list[str]] = [[] for _ in range(n)]
        tokens = [0] * n
        finish: list[str | None] = [None] * n
        first: float | None = None
        out: EngineOutput | None = None
        async for out in outputs:
            for d in out.choices:
                if d.text:
                    texts[d.index].append(d.text)
                tokens[d.index] += d.num_tokens
                if d.finish_reason is not None:
                    finish[d.index] = d.finish_reason
            if first is None and out.choices:
                first = out.first_token_time or time.monotonic()
        last = out.last_token_time if out is not None and out.last_token_time else time.monotonic()
        completion = sum(tokens)
        self._observe(prep, completion, first, last, max(tokens))
        if any(f in ("abort", "error") for f in finish):
            raise ServiceUnavailableError("The engine stopped the request.")
        usage = _usage(len(prep.prompt_ids), completion)
        if prep.kind == "chat":
            choices: list[dict[str, Any]] = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": "".join(texts[i])},
                    "logprobs": None,
                    "finish_reason": finish[i],
                }
                for i in range(n)
            ]
            obj = "chat.completion"
        else:
            choices = [
                {"index": i, "text": "".join(texts[i]), "logprobs": None, "finish_reason": finish[i]}
                for i in range(n)
            ]
            obj = "text_completion"
        return dumps(
            {
                "id": prep.response_id,
                "object": obj,
                "created": int(time.time()),
                "model": self.model_name,
                "choices": choices,
                "usage": usage,
            }
        )

    async def _sse(
        self, prep: _Prepared, outputs: AsyncGenerator[EngineOutput, None]
    ) -> AsyncGenerator[bytes, None]:
        n = prep.sampling.n
        created = str(int(time.time())).encode()
        chat = prep.kind == "chat"
        obj = b"chat.completion.chunk" if chat else b"text_completion"
        head = (
            b'data: {"id":"' + prep.response_id.encode() + b'","object":"' + obj + b'","created":' + created
        )
        head += b',"model":' + self._model_json + b',"choices":['
        tail = b'],"usage":null}\n\n' if prep.include_usage else b"]}\n\n"
        idx = [str(i).encode() for i in range(n)]
        if chat:
            pre = [b'{"index":' + i + b',"delta":{"content":' for i in idx]
            mid_open = b'},"logprobs":null,"finish_reason":null}'
            # The role event goes out with the first generated token, never before it.
            role: bytes | None = (
                head
                + b",".join(
                    b'{"index":'
                    + i
                    + b',"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}'
                    for i in idx
                )
                + tail
            )
        else:
            role = None
            pre = [b'{"index":' + i + b',"text":' for i in idx]
            mid_open = b',"logprobs":null,"finish_reason":null}'
        tokens = [0] * n
        finish: list[str | None] = [None] * n
        first: float | None = None
        escape = _escape
        try:
            async for out in outputs:
                parts = []
                for d in out.choices:
                    i = d.index
                    tokens[i] += d.num_tokens
                    fr = d.finish_reason
                    if fr is None:
                        if d.text:
                            parts.append(pre[i] + escape(d.text) + mid_open)
                        continue
                    finish[i] = fr
                    if fr not in ("stop", "length"):
                        continue
                    end = b'"' + fr.encode() + b'"}'
                    if chat:
                        if d.text:
                            parts.append(
                                pre[i] + escape(d.text) + b'},"logprobs":null,"finish_reason":' + end
                            )
                        else:
                            parts.append(
                                b'{"index":' + idx[i] + b',"delta":{},"logprobs":null,"finish_reason":' + end
                            )
                    else:
                        parts.append(pre[i] + escape(d.text) + b',"logprobs":null,"finish_reason":' + end)
                if first is None and out.choices:
                    first = time.monotonic()
                    if role is not None:
                        yield role
                if parts:
                    yield head + b",".join(parts) + tail
        finally:
            completion = sum(tokens)
            self._observe(prep, completion, first, time.monotonic(), max(tokens))
        if any(f not in ("stop", "length") for f in finish):
            err = ServiceUnavailableError("The engine stopped the request.")
            yield b"data: " + dumps(err.body()) + b"\n\n"
        elif prep.include_usage:
            usage = dumps(_usage(len(prep.prompt_ids), completion))
            yield head + b'],"usage":' + usage + b"}\n\n"
        yield DONE


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _validate(model: type[ChatCompletionRequest] | type[CompletionRequest], body: Any) -> Any:
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


def _reject_unsupported(req: Any, names: tuple[str, ...], **allowed: tuple[Any, ...]) -> None:
    for name in names:
        value = getattr(req, name)
        if value is not None and value != {} and value != []:
            raise InvalidRequestError(f"'{name}' is not supported by this server.", param=name)
    for name, ok in allowed.items():
        if getattr(req, name) not in ok:
            raise InvalidRequestError(f"'{name}' is not supported by this server.", param=name)


def _message(i: int, m: Any) -> dict[str, str]:
    content = m.content
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        chunks = []
        for j, part in enumerate(content):
            if part.type != "text" or not isinstance(getattr(part, "text", None), str):
                raise InvalidRequestError(
                    f"Content parts of type '{part.type}' are not supported; only 'text'.",
                    param=f"messages[{i}].content[{j}]",
                )
            chunks.append(part.text)
        text = "\n".join(chunks)
    return {"role": m.role, "content": text}


async def _until_disconnect(receive: Callable[[], Awaitable[Any]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(work: asyncio.Task[Any], receive: Callable[[], Awaitable[Any]]) -> bool:
    """Wait for ``work`` or for the client to go (also when the HTTP layer cancels the request);
    in that case cancel ``work``, which aborts its engine request. True if ``work`` finished."""
    gone = asyncio.get_running_loop().create_task(_until_disconnect(receive))
    try:
        await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        return work.done()
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(BaseException):
                await work


class _SSEResponse(Response):
    """Streams a :class:`Stream` until it ends or the client goes; always closes it (engine abort)."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.status_code = 200
        self.background = None
        self.init_headers({})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def pump() -> None:
            headers = [
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for chunk in self.stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        work = asyncio.get_running_loop().create_task(pump())
        try:
            if await _unless_disconnected(work, receive):
                with contextlib.suppress(OSError):  # the client went while we were sending
                    work.result()
        finally:
            await self.stream.aclose()


def error_response(exc: BaseException) -> Response:
    if not isinstance(exc, InferaError):
        log.error("unhandled error", exc_info=exc)
        exc = InternalError("The server had an error while processing your request.")
    return Response(
        dumps(exc.body()), status_code=exc.status, headers=exc.headers, media_type="application/json"
    )


def build_synthetic_app(serving: Serving) -> FastAPI:
    """The synthetic backend's OpenAI subset as an ASGI app (the body has already been bounded)."""
    app = FastAPI(title="infera synthetic backend", docs_url=None, redoc_url=None, openapi_url=None)

    async def generation(request: Request, handler: Callable[[Any], Coroutine[Any, Any, Reply]]) -> Any:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, RecursionError):
            return error_response(
                InvalidRequestError("We could not parse the JSON body of your request.", code="invalid_json")
            )
        work = asyncio.get_running_loop().create_task(handler(body))
        if not await _unless_disconnected(work, request.receive):
            return Response(status_code=499)
        try:
            reply = work.result()
        except Exception as exc:
            return error_response(exc)
        if isinstance(reply, Stream):
            return _SSEResponse(reply)
        return Response(reply, media_type="application/json")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await generation(request, serving.chat)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await generation(request, serving.completions)

    @app.get("/v1/models")
    async def models() -> Response:
        return Response(serving.models(), media_type="application/json")

    @app.get("/version")
    async def version() -> Response:
        return Response(dumps({"version": "synthetic"}), media_type="application/json")

    async def http_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, StarletteHTTPException):
            if exc.status_code == 404:
                return error_response(NotFoundError("Not found."))
            if exc.status_code == 405:
                return error_response(MethodNotAllowedError("Method not allowed."))
            return error_response(InvalidRequestError(str(exc.detail)))
        return error_response(exc)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, http_error)
    return app


class SyntheticBackend(Backend):
    name = "synthetic"

    def __init__(self, settings: RuntimeSettings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine

    async def start(self, metrics: Any) -> None:
        await self.engine.start()
        self.app = build_synthetic_app(
            Serving(model_name=self.settings.model_name, engine=self.engine, metrics=metrics)
        )

    async def shutdown(self) -> None:
        await self.engine.shutdown()

    def is_healthy(self) -> bool:
        return self.engine.is_healthy()

    def stats(self) -> EngineStats:
        return self.engine.stats()

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len
