"""vLLM's ``AsyncLLM`` (the v1 engine) behind the :class:`~.base.Engine` interface.

The runtime hands vLLM token ids (``tokens_input``), so vLLM does no second tokenization and
takes its synchronous input path; outputs are requested as deltas (``RequestOutputKind.DELTA``)
when streaming and as one final output otherwise, so nothing is re-sent or re-joined per token.
Scheduler statistics (running, waiting, KV-cache usage) come from a stat logger that vLLM calls
after each engine step; the request counts are corrected with the front end's own count of
unfinished requests, since an idle engine core sends no further stats after an abort.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from ..errors import ContextLengthExceededError, InvalidRequestError, ServiceUnavailableError
from ..settings import RuntimeSettings
from .base import ChatMessages, ChoiceDelta, Engine, EngineOutput, EngineRequest, EngineStats

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger("infera.engine")

# Above this many characters, templating/tokenizing runs in a thread instead of the event loop.
_INLINE_CHARS = 8192
_FINISH = {"stop": "stop", "length": "length", "abort": "abort"}


class _StatsSink:
    """Holds the latest scheduler stats per engine index (written by vLLM's output handler)."""

    __slots__ = ("latest",)

    def __init__(self) -> None:
        self.latest: dict[int, Any] = {}

    def factory(self, vllm_config: Any, engine_index: int = 0) -> Any:
        from vllm.v1.metrics.loggers import StatLoggerBase

        sink = self

        class InferaStatLogger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                self.engine_index = engine_index

            def record(
                self,
                scheduler_stats: Any,
                iteration_stats: Any,
                mm_cache_stats: Any = None,
                engine_idx: int = 0,
            ) -> None:
                if scheduler_stats is not None:
                    sink.latest[engine_idx] = scheduler_stats

            def log_engine_initialized(self) -> None:
                pass

        return InferaStatLogger(vllm_config, engine_index)


def build_engine_args(settings: RuntimeSettings) -> Any:
    """The ``AsyncEngineArgs`` for ``settings`` (``engine_args`` override the named fields)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    kwargs: dict[str, Any] = {
        "model": settings.model,
        "served_model_name": [settings.model_name],
        "dtype": settings.dtype,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "enforce_eager": settings.enforce_eager,
        "disable_log_stats": False,
        "enable_log_requests": False,
    }
    if settings.max_model_len is not None:
        kwargs["max_model_len"] = settings.max_model_len
    if settings.quantization is not None:
        kwargs["quantization"] = settings.quantization
    kwargs.update(settings.engine_args)
    try:
        return AsyncEngineArgs(**kwargs)
    except TypeError as exc:
        raise ValueError(f"invalid engine_args: {exc}") from exc


class VllmEngine(Engine):
    name = "vllm"

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self._llm: AsyncLLM | None = None
        self._tokenizer: Any = None
        self._max_model_len = 0
        self._vocab_size = 0
        self._defaults: dict[str, Any] = {}
        self._stats = _StatsSink()
        self._sampling_cls: Any = None
        self._output_kind: Any = None
        self._tokens_input: Any = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        from vllm.inputs.engine import tokens_input
        from vllm.sampling_params import RequestOutputKind, SamplingParams
        from vllm.v1.engine.async_llm import AsyncLLM

        args = build_engine_args(self.settings)
        log.info("loading model", extra={"model": self.settings.model, "engine": "vllm"})
        # vLLM builds its engine-core process and loads weights synchronously: keep the event
        # loop (and so the health endpoints) responsive meanwhile.
        llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args, stat_loggers=[self._stats.factory])
        self._llm = llm
        # Start vLLM's output handler now, outside any request (it would otherwise start on the
        # first request and inherit that request's context, request id included).
        start_handler = getattr(llm, "_run_output_handler", None)
        if start_handler is not None:
            start_handler()
        self._tokenizer = llm.get_tokenizer()
        self._max_model_len = int(llm.model_config.max_model_len)
        self._vocab_size = int(llm.model_config.get_vocab_size())
        self._defaults = _defaults_from(llm.model_config.get_diff_sampling_param())
        self._sampling_cls = SamplingParams
        self._output_kind = RequestOutputKind
        self._tokens_input = tokens_input
        log.info(
            "model loaded",
            extra={"max_model_len": self._max_model_len, "sampling_defaults": self._defaults},
        )

    async def shutdown(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            # Stop the output handler first: it would report the closing engine as a failure.
            handler = getattr(llm, "output_handler", None)
            if isinstance(handler, asyncio.Task):
                handler.cancel()
                with contextlib.suppress(BaseException):
                    await handler
            await asyncio.to_thread(llm.shutdown)

    def is_healthy(self) -> bool:
        llm = self._llm
        return llm is None or not llm.errored

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def default_sampling(self) -> dict[str, Any]:
        return dict(self._defaults)

    # ------------------------------------------------------------------ text
    async def apply_chat_template(self, messages: ChatMessages) -> str:
        size = sum(len(m.get("content") or "") for m in messages)
        if size > _INLINE_CHARS:
            return await asyncio.to_thread(self._render, messages)
        return self._render(messages)

    def _render(self, messages: ChatMessages) -> str:
        tok = self._tokenizer
        if getattr(tok, "chat_template", None) is None:
            raise InvalidRequestError(
                "This model has no chat template; use /v1/completions.", param="messages"
            )
        try:
            out = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja2 TemplateError (raise_exception in the template), ...
            raise InvalidRequestError(
                f"The model's chat template rejected the messages: {exc}", param="messages"
            ) from exc
        if not isinstance(out, str):
            raise InvalidRequestError("The model's chat template did not produce text.", param="messages")
        return out

    async def tokenize(self, text: str, *, add_special_tokens: bool) -> list[int]:
        if len(text) > _INLINE_CHARS:
            return await asyncio.to_thread(self._encode, text, add_special_tokens)
        return self._encode(text, add_special_tokens)

    def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    # ------------------------------------------------------------------ generation
    def generate(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        llm = self._llm
        if llm is None or llm.errored:
            raise ServiceUnavailableError("The engine is not running.")
        prompt_len = len(request.prompt_token_ids)
        s = request.sampling
        if prompt_len == 0:
            raise InvalidRequestError("The prompt is empty.", param="prompt")
        if prompt_len + s.max_tokens > self._max_model_len:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {self._max_model_len} tokens; the prompt has "
                f"{prompt_len} tokens and max_tokens is {s.max_tokens}.",
                param="max_tokens" if prompt_len < self._max_model_len else "messages",
            )
        bad = [t for t in request.prompt_token_ids if t < 0 or t >= self._vocab_size]
        if bad:
            raise InvalidRequestError(f"Token id {bad[0]} is out of vocabulary.", param="prompt")
        kind = self._output_kind.DELTA if request.stream else self._output_kind.FINAL_ONLY
        try:
            params = self._sampling_cls(
                n=s.n,
                max_tokens=s.max_tokens,
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=s.top_k,
                min_p=s.min_p,
                seed=s.seed,
                stop=list(s.stop) or None,
                presence_penalty=s.presence_penalty,
                frequency_penalty=s.frequency_penalty,
                repetition_penalty=s.repetition_penalty,
                ignore_eos=s.ignore_eos,
                output_kind=kind,
            )
        except ValueError as exc:
            raise InvalidRequestError(f"Invalid sampling parameters: {exc}") from exc
        prompt = self._tokens_input(request.prompt_token_ids)
        return self._stream(llm, request.request_id, prompt, params, request.stream)

    async def _stream(
        self, llm: AsyncLLM, request_id: str, prompt: Any, params: Any, stream: bool
    ) -> AsyncGenerator[EngineOutput, None]:
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        gen = llm.generate(prompt, params, request_id)
        try:
            async for out in gen:
                deltas = [
                    ChoiceDelta(
                        c.index,
                        c.text,
                        len(c.token_ids),
                        _FINISH.get(c.finish_reason, "stop") if c.finish_reason is not None else None,  # type: ignore[arg-type]
                    )
                    for c in out.outputs
                ]
                if stream:
                    yield EngineOutput(deltas, out.finished)
                else:
                    m = out.metrics
                    first = getattr(m, "first_token_ts", 0.0) or None
                    last = getattr(m, "last_token_ts", 0.0) or None
                    yield EngineOutput(deltas, out.finished, first, last)
        except VLLMClientError as exc:
            raise InvalidRequestError(str(exc)) from exc
        except EngineDeadError as exc:
            raise ServiceUnavailableError("The engine died; the server is restarting.") from exc
        finally:
            # Closing vLLM's generator early (client gone, timeout) aborts the request there.
            await gen.aclose()

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    def stats(self) -> EngineStats:
        llm = self._llm
        if llm is None:
            return EngineStats()
        unfinished = llm.get_num_unfinished_requests()
        latest = list(self._stats.latest.values())
        if unfinished == 0:
            # The engine core sends no stats while idle; nothing is running then.
            return EngineStats(kv_cache_usage=0.0, running=0, waiting=0)
        if not latest:
            return EngineStats(running=unfinished)
        running = sum(int(x.num_running_reqs) for x in latest)
        waiting = sum(
            int(x.num_waiting_reqs) + int(getattr(x, "num_skipped_waiting_reqs", 0)) for x in latest
        )
        kv = max(float(x.kv_cache_usage) for x in latest)
        return EngineStats(
            kv_cache_usage=min(1.0, max(0.0, kv)),
            running=min(running, unfinished),
            waiting=min(waiting, unfinished),
        )


def _defaults_from(diff: dict[str, Any]) -> dict[str, Any]:
    known = {
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "max_tokens",
    }
    return {k: v for k, v in diff.items() if k in known and v is not None}
