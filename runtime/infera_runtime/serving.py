"""The serving layer: OpenAI requests in, JSON bytes or an SSE byte stream out. No HTTP types.

A request goes: validate (pydantic) -> render the chat template / tokenize -> sampling options
(request values, else the model's generation defaults) -> admission -> engine. Everything that
can reject a request (bad input, context length, capacity) happens before the first byte is
produced, so errors are real HTTP statuses, never a broken stream.

Hot path: streamed chunks are built from byte templates prepared once per request; per engine
step the only work is JSON-escaping the new text and one ``bytes.join``. Nothing per token goes
through pydantic, a queue or an extra task.

Cancellation: :meth:`Call.cancel` (client gone, ``request_timeout_s`` expired, shutdown) takes a
queued request out of the admission queue or aborts it in the engine, which frees its KV cache;
the response then ends (non-streaming: an error; streaming: an error event then ``[DONE]``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from .admission import Admission
from .engine.base import Engine, EngineOutput, EngineRequest, SamplingOptions
from .errors import (
    ClientDisconnectedError,
    ContextLengthExceededError,
    InferaError,
    InvalidRequestError,
    ModelNotFoundError,
    RequestTimeoutError,
    ServiceUnavailableError,
    validation_error,
)
from .metrics import Metrics
from .protocol import ChatCompletionRequest, CompletionRequest

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

CancelReason = Literal["disconnect", "timeout", "shutdown"]
DONE = b"data: [DONE]\n\n"
MAX_STOP = 16


class Call:
    """One API request as the serving layer sees it; the HTTP layer may :meth:`cancel` it."""

    __slots__ = (
        "_abort_task",
        "_engine",
        "_timer",
        "_waiter",
        "arrival",
        "completion_tokens",
        "engine_request_id",
        "finish_reasons",
        "finished",
        "prompt_tokens",
        "reason",
        "request_id",
    )

    def __init__(self, request_id: str, engine: Engine) -> None:
        self.request_id = request_id
        self.arrival = time.monotonic()
        self._engine = engine
        self.reason: CancelReason | None = None
        self.engine_request_id: str | None = None  # set while the engine holds the request
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._abort_task: asyncio.Task[None] | None = None
        self.finished = False
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reasons: list[str | None] = []

    def cancel(self, reason: CancelReason) -> None:
        """Stop the request (idempotent): leave the queue, or abort it in the engine."""
        if self.finished or self.reason is not None:
            return
        self.reason = reason
        log.info(
            "cancelling request: %s",
            reason,
            extra={"request_id": self.request_id, "engine_request_id": self.engine_request_id},
        )
        if self._waiter is not None and not self._waiter.done():
            self._waiter.cancel()
        if self.engine_request_id is not None:
            self._abort_task = asyncio.get_running_loop().create_task(
                self._engine.abort(self.engine_request_id)
            )

    def error(self) -> InferaError:
        if self.reason == "timeout":
            return RequestTimeoutError("The request did not finish within the server's request timeout.")
        if self.reason == "disconnect":
            return ClientDisconnectedError("The client closed the connection.")
        return ServiceUnavailableError("The server is shutting down.")

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }
        if self.finish_reasons:
            out["finish_reason"] = ",".join(str(x) for x in self.finish_reasons)
        if self.reason:
            out["cancelled"] = self.reason
        return out


@dataclass(slots=True)
class _Prepared:
    kind: Literal["chat", "completion"]
    response_id: str
    prompt_ids: list[int]
    sampling: SamplingOptions
    stream: bool
    include_usage: bool
    prompt_text: str | None = None


class Stream:
    """An SSE body: iterate for byte chunks; :meth:`aclose` always releases the request."""

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
        admission: Admission,
        metrics: Metrics,
        request_timeout_s: float,
    ) -> None:
        self.model_name = model_name
        self.engine = engine
        self.admission = admission
        self.metrics = metrics
        self.request_timeout_s = request_timeout_s
        self.created = int(time.time())
        self.calls: set[Call] = set()
        self._model_json = _escape(model_name)

    # ------------------------------------------------------------------ calls
    def new_call(self, request_id: str) -> Call:
        return Call(request_id, self.engine)

    def cancel_all(self, reason: CancelReason) -> int:
        calls = list(self.calls)
        for call in calls:
            call.cancel(reason)
        return len(calls)

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

    async def chat(self, call: Call, body: Any) -> Reply:
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
        )
        return await self._run(call, prep)

    async def completions(self, call: Call, body: Any) -> Reply:
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
        )
        return await self._run(call, prep)

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

    async def _admit(self, call: Call) -> None:
        fut = self.admission.new_waiter()  # raises RateLimitError (429) when full
        if fut is None:
            return
        call._waiter = fut
        try:
            await fut
        except asyncio.CancelledError:
            self.admission.forget(fut)
            if call.reason is not None:  # our own cancel(): timeout, disconnect, shutdown
                raise call.error() from None
            raise
        except BaseException:
            self.admission.forget(fut)
            raise
        finally:
            call._waiter = None

    async def _run(self, call: Call, prep: _Prepared) -> Reply:
        loop = asyncio.get_running_loop()
        call.prompt_tokens = len(prep.prompt_ids)
        call._timer = loop.call_at(
            loop.time() + self.request_timeout_s - (time.monotonic() - call.arrival),
            call.cancel,
            "timeout",
        )
        self.calls.add(call)
        admitted = False
        try:
            await self._admit(call)
            admitted = True
            if call.reason is not None:
                raise call.error()
            ereq = EngineRequest(
                request_id=prep.response_id,
                prompt_token_ids=prep.prompt_ids,
                sampling=prep.sampling,
                prompt=prep.prompt_text,
                stream=prep.stream,
            )
            outputs = self.engine.generate(ereq)  # validates eagerly: 400s are raised here
            call.engine_request_id = prep.response_id
        except BaseException:
            self._finish(call, admitted)
            raise
        if prep.stream:
            return self._stream(call, prep, outputs)
        try:
            return await self._collect(call, prep, outputs)
        finally:
            self._finish(call, True)

    def _finish(self, call: Call, admitted: bool) -> None:
        if call.finished:
            return
        call.finished = True
        call.engine_request_id = None
        if call._timer is not None:
            call._timer.cancel()
        self.calls.discard(call)
        if admitted:
            self.admission.release()

    def _observe(self, call: Call, first: float | None, last: float | None, max_choice_tokens: int) -> None:
        tpot = None
        if first is not None and last is not None and max_choice_tokens > 1:
            tpot = (last - first) / (max_choice_tokens - 1)
        self.metrics.observe_generation(
            prompt_tokens=call.prompt_tokens,
            generation_tokens=call.completion_tokens,
            ttft_s=(first - call.arrival) if first is not None else None,
            tpot_s=tpot,
        )

    async def _collect(
        self, call: Call, prep: _Prepared, outputs: AsyncGenerator[EngineOutput, None]
    ) -> bytes:
        n = prep.sampling.n
        texts: list[list[str]] = [[] for _ in range(n)]
        tokens = [0] * n
        finish: list[str | None] = [None] * n
        first: float | None = None
        out: EngineOutput | None = None
        try:
            async for out in outputs:
                for d in out.choices:
                    if d.text:
                        texts[d.index].append(d.text)
                    tokens[d.index] += d.num_tokens
                    if d.finish_reason is not None:
                        finish[d.index] = d.finish_reason
                if first is None and out.choices:
                    first = out.first_token_time or time.monotonic()
        finally:
            await outputs.aclose()
        last = out.last_token_time if out is not None and out.last_token_time else time.monotonic()
        call.completion_tokens = sum(tokens)
        call.finish_reasons = finish
        self._observe(call, first, last, max(tokens))
        if call.reason is not None:
            raise call.error()
        if any(f in ("abort", "error") for f in finish):
            raise ServiceUnavailableError("The engine stopped the request.")
        usage = {
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": call.completion_tokens,
            "total_tokens": call.prompt_tokens + call.completion_tokens,
        }
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

    def _stream(self, call: Call, prep: _Prepared, outputs: AsyncGenerator[EngineOutput, None]) -> Stream:
        closed = False

        async def close() -> None:
            nonlocal closed
            if closed:
                return
            closed = True
            try:
                await gen.aclose()
                await outputs.aclose()
            finally:
                self._finish(call, True)

        gen = self._sse(call, prep, outputs)
        return Stream(gen, close)

    async def _sse(
        self, call: Call, prep: _Prepared, outputs: AsyncGenerator[EngineOutput, None]
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
            role = b",".join(
                b'{"index":'
                + i
                + b',"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}'
                for i in idx
            )
            yield head + role + tail
        else:
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
                if parts:
                    yield head + b",".join(parts) + tail
        finally:
            call.completion_tokens = sum(tokens)
            call.finish_reasons = finish
            self._observe(call, first, time.monotonic(), max(tokens))
        if call.reason == "disconnect":
            return
        if call.reason is not None or any(f not in ("stop", "length") for f in finish):
            err = (
                call.error()
                if call.reason is not None
                else ServiceUnavailableError("The engine stopped the request.")
            )
            yield b"data: " + dumps(err.body()) + b"\n\n"
        elif prep.include_usage:
            usage = dumps(
                {
                    "prompt_tokens": call.prompt_tokens,
                    "completion_tokens": call.completion_tokens,
                    "total_tokens": call.prompt_tokens + call.completion_tokens,
                }
            )
            yield head + b'],"usage":' + usage + b"}\n\n"
        yield DONE


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
