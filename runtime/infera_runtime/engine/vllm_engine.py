"""The vLLM backend: vLLM's own OpenAI server app, in-process over one ``AsyncLLM``.

The settings become ``vllm serve`` arguments (:func:`serve_argv`), parsed and validated by vLLM's
own parser, so every flag ``vllm serve`` takes means the same here (``serve_args`` passes any
other). The engine is built as ``vllm serve`` builds it, plus one stat logger of ours that feeds
the ``infera_*`` metrics (TTFT, TPOT, prompt and generated tokens, running/waiting, KV-cache
usage) from the engine's own per-step statistics. The app is vLLM's (routes, protocol models,
chat templates, tool and reasoning parsers, structured outputs, logprobs, errors), with its
state initialised and its lifespan entered exactly as in ``vllm serve``; only the HTTP server
and what :mod:`infera_runtime.app` adds around it are ours. Version differences live in
:mod:`infera_runtime.vllm_compat`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from argparse import Namespace
from contextlib import AbstractAsyncContextManager
from typing import Any

from .. import vllm_compat as compat
from ..settings import RuntimeSettings
from .base import Backend, EngineStats

log = logging.getLogger("infera.engine")


def serve_argv(settings: RuntimeSettings) -> list[str]:
    """The ``vllm serve`` arguments for ``settings`` (``serve_args`` last, so they win)."""
    argv = [
        "--model",
        settings.model,
        "--served-model-name",
        settings.model_name,
        "--dtype",
        settings.dtype,
        "--gpu-memory-utilization",
        str(settings.gpu_memory_utilization),
        "--tensor-parallel-size",
        str(settings.tensor_parallel_size),
        "--disable-uvicorn-access-log",
    ]
    if settings.max_model_len is not None:
        argv += ["--max-model-len", str(settings.max_model_len)]
    if settings.quantization is not None:
        argv += ["--quantization", settings.quantization]
    if settings.enforce_eager:
        argv.append("--enforce-eager")
    if settings.tool_call_parser is not None:
        argv += ["--tool-call-parser", settings.tool_call_parser]
    if settings.enable_auto_tool_choice:
        argv.append("--enable-auto-tool-choice")
    if settings.reasoning_parser is not None:
        argv += ["--reasoning-parser", settings.reasoning_parser]
    if settings.chat_template is not None:
        argv += ["--chat-template", settings.chat_template]
    if settings.structured_outputs_backend is not None:
        argv += ["--structured-outputs-config", f'{{"backend": "{settings.structured_outputs_backend}"}}']
    if settings.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(settings.max_num_seqs)]
    if settings.max_num_batched_tokens is not None:
        argv += ["--max-num-batched-tokens", str(settings.max_num_batched_tokens)]
    return argv + list(settings.serve_args)


def build_serve_args(settings: RuntimeSettings) -> Namespace:
    """vLLM's parsed serve arguments; ``engine_args`` set engine fields by name. Raises ValueError."""
    args = compat.parse_serve_args(serve_argv(settings))
    for key, value in settings.engine_args.items():
        if not hasattr(args, key):
            raise ValueError(f"invalid engine_args: {key!r} is not a vLLM engine argument")
        setattr(args, key, value)
    return args


class _StatsSink:
    """Latest scheduler stats per engine index, and per-step observations into our metrics."""

    __slots__ = ("latest", "metrics")

    def __init__(self) -> None:
        self.latest: dict[int, Any] = {}
        self.metrics: Any = None

    def factory(self, vllm_config: Any, engine_index: int = 0) -> Any:
        sink = self
        base: Any = compat.stat_logger_base()

        class InferaStatLogger(base):  # type: ignore[misc]
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
                if iteration_stats is not None and sink.metrics is not None:
                    sink.observe(iteration_stats)

            def log_engine_initialized(self) -> None:
                pass

        return InferaStatLogger(vllm_config, engine_index)

    def observe(self, iteration_stats: Any) -> None:
        m = self.metrics
        prompt, generated, ttfts, tpots = compat.iteration_observations(iteration_stats)
        if prompt:
            m.prompt_tokens.inc(prompt)
        if generated:
            m.generation_tokens.inc(generated)
        for t in ttfts:
            m.ttft.observe(t)
        for t in tpots:
            m.tpot.observe(t)


def reap_children(grace_s: float = 5.0) -> int:
    """Stop every process this one started that is still running (vLLM's engine core and its
    workers, including a worker whose engine core was killed, which would otherwise linger until
    it notices); SIGTERM, then SIGKILL after ``grace_s``. Returns how many were still running."""
    import psutil

    try:
        kids = psutil.Process().children(recursive=True)
    except psutil.Error:
        return 0
    for k in kids:
        with contextlib.suppress(psutil.Error):
            k.terminate()
    _, alive = psutil.wait_procs(kids, timeout=grace_s)
    for k in alive:
        with contextlib.suppress(psutil.Error):
            k.kill()
    if kids:
        log.info("stopped %d leftover engine processes", len(kids))
    return len(kids)


class VllmBackend(Backend):
    name = "vllm"

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.args = build_serve_args(settings)  # fail fast on bad settings
        self._llm: Any = None
        self._lifespan: AbstractAsyncContextManager[Any] | None = None
        self._max_model_len = 0
        self._stats = _StatsSink()

    async def start(self, metrics: Any) -> None:
        version = compat.check_version()
        log.info("loading model", extra={"model": self.settings.model, "engine": "vllm", "vllm": version})
        compat.import_parser_plugins(self.args)
        compat.raise_open_files_limit()
        engine_args = compat.engine_args_from(self.args)
        self._stats.metrics = metrics
        # vLLM starts its engine-core process and loads weights synchronously: keep the event
        # loop (and so the health endpoints) responsive meanwhile.
        llm = await asyncio.to_thread(compat.create_async_llm, engine_args, [self._stats.factory])
        self._llm = llm
        # Start vLLM's output handler now, outside any request (it would otherwise start on the
        # first request and inherit that request's context, request id included).
        start_handler = getattr(llm, "_run_output_handler", None)
        if start_handler is not None:
            start_handler()
        self.app = await compat.build_openai_app(llm, self.args)
        self._lifespan = compat.lifespan(self.app)
        await self._lifespan.__aenter__()
        self._max_model_len = int(llm.model_config.max_model_len)
        log.info("model loaded", extra={"max_model_len": self._max_model_len})

    async def shutdown(self) -> None:
        llm, self._llm = self._llm, None
        lifespan, self._lifespan = self._lifespan, None
        if lifespan is not None:
            with contextlib.suppress(Exception):
                await lifespan.__aexit__(None, None, None)
        if llm is not None:
            # Stop the output handler first: it would report the closing engine as a failure.
            handler = getattr(llm, "output_handler", None)
            if isinstance(handler, asyncio.Task):
                handler.cancel()
                with contextlib.suppress(BaseException):
                    await handler
            try:
                await asyncio.to_thread(llm.shutdown)
            finally:
                await asyncio.to_thread(reap_children)

    def is_healthy(self) -> bool:
        llm = self._llm
        return llm is None or not llm.errored

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def stats(self) -> EngineStats:
        llm = self._llm
        if llm is None:
            return EngineStats()
        unfinished = compat.unfinished_requests(llm)
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
        kv = max(float(getattr(x, "kv_cache_usage", 0.0)) for x in latest)
        return EngineStats(
            kv_cache_usage=min(1.0, max(0.0, kv)),
            running=min(running, unfinished),
            waiting=min(waiting, unfinished),
        )
