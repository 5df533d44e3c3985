"""The one place that knows where vLLM keeps the pieces of its OpenAI server.

The runtime serves the OpenAI API with vLLM's own serving layer (``vllm serve``'s FastAPI app,
its request models, chat templating, tool and reasoning parsers, structured outputs, logprobs),
in-process over the same ``AsyncLLM``. vLLM moved those pieces between releases; every import
and call whose location or signature differs between the supported releases is made here, and
nowhere else. Accepted: vLLM 0.26 through 0.33 (``SUPPORTED``; run on 0.26.0 and 0.32.0); the layouts:

* 0.26 - 0.2x: ``vllm.entrypoints.openai.api_server`` holds ``build_app``, ``init_app_state``,
  ``validate_api_server_args``; ``vllm.entrypoints.openai.cli_args`` the argument parser.
* 0.3x: ``vllm.entrypoints.launchers`` holds them (``app``, ``api_server.app_state``,
  ``launcher``, ``cli_args``); the old module re-exports them with a deprecation warning.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from argparse import Namespace
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

log = logging.getLogger("infera.vllm")

SUPPORTED = ((0, 26), (0, 33))


def _first(*candidates: tuple[str, str]) -> Any:
    """The first ``module:attribute`` of ``candidates`` that imports."""
    errors = []
    for module, attr in candidates:
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            errors.append(f"{module}.{attr}: {exc}")
    raise ImportError("vLLM has none of: " + "; ".join(errors))


def version() -> str:
    return str(importlib.import_module("vllm.version").__version__)


def version_tuple(text: str | None = None) -> tuple[int, int]:
    parts = (text or version()).split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def check_version() -> str:
    """vLLM's version; a warning when it is outside the releases this runtime was run on."""
    v = version()
    lo, hi = SUPPORTED
    if not lo <= version_tuple(v) <= hi:
        log.warning("vLLM %s is outside the releases this runtime supports (%d.%d to %d.%d)", v, *lo, *hi)
    return v


def _cli_args(name: str) -> tuple[tuple[str, str], tuple[str, str]]:
    return ("vllm.entrypoints.launchers.cli_args", name), ("vllm.entrypoints.openai.cli_args", name)


def parse_serve_args(argv: Sequence[str]) -> Namespace:
    """``vllm serve`` arguments parsed and validated by vLLM's own parser (raises ValueError)."""
    parser_cls = _first(
        ("vllm.utils.argparse_utils", "FlexibleArgumentParser"), ("vllm.utils", "FlexibleArgumentParser")
    )
    make_arg_parser = _first(*_cli_args("make_arg_parser"))
    validate = _first(*_cli_args("validate_parsed_serve_args"))
    parser = make_arg_parser(parser_cls(prog="infera-runtime (vllm serve arguments)", exit_on_error=False))
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse reports its error on stderr, then exits
        raise ValueError(f"invalid vLLM serve arguments {list(argv)!r} (see the log above)") from exc
    except Exception as exc:
        raise ValueError(f"invalid vLLM serve arguments: {exc}") from exc
    try:
        validate(args)
        _first(
            ("vllm.entrypoints.launchers.launcher", "validate_api_server_args"),
            ("vllm.entrypoints.openai.api_server", "validate_api_server_args"),
        )(args)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"invalid vLLM serve arguments: {exc}") from exc
    parsed: Namespace = args
    return parsed


def import_parser_plugins(args: Namespace) -> None:
    """Load ``--tool-parser-plugin`` / ``--reasoning-parser-plugin`` files, as ``vllm serve`` does."""
    if getattr(args, "tool_parser_plugin", None) and len(args.tool_parser_plugin) > 3:
        _first(
            ("vllm.tool_parsers", "ToolParserManager"),
            ("vllm.entrypoints.openai.tool_parsers", "ToolParserManager"),
        ).import_tool_parser(args.tool_parser_plugin)
    if getattr(args, "reasoning_parser_plugin", None) and len(args.reasoning_parser_plugin) > 3:
        _first(
            ("vllm.reasoning", "ReasoningParserManager"),
        ).import_reasoning_parser(args.reasoning_parser_plugin)


def raise_open_files_limit() -> None:
    """What ``vllm serve`` does before it serves: raise the soft limit of open files (many clients)."""
    set_ulimit = _first(("vllm.utils.system_utils", "set_ulimit"), ("vllm.utils", "set_ulimit"))
    set_ulimit()


def engine_args_from(args: Namespace) -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs

    engine_args = AsyncEngineArgs.from_cli_args(args)
    propagate: Callable[[Namespace, Any], None] | None
    try:
        propagate = _first(*_cli_args("propagate_flash_late_interaction"))
    except ImportError:
        propagate = None
    if propagate is not None:
        propagate(args, engine_args)
    return engine_args


def create_async_llm(engine_args: Any, stat_loggers: list[Any]) -> Any:
    """``AsyncLLM`` as ``vllm serve`` builds it (its usage context and flags), plus our stat loggers.

    Synchronous and slow (it starts the engine-core process and loads the weights): call it in
    a thread.
    """
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    usage = UsageContext.OPENAI_API_SERVER
    vllm_config = engine_args.create_engine_config(usage_context=usage)
    kwargs: dict[str, Any] = {
        "vllm_config": vllm_config,
        "usage_context": usage,
        "stat_loggers": stat_loggers,
        "enable_log_requests": engine_args.enable_log_requests,
        "disable_log_stats": engine_args.disable_log_stats,
    }
    params = inspect.signature(AsyncLLM.from_vllm_config).parameters
    if "aggregate_engine_logging" in params:
        kwargs["aggregate_engine_logging"] = getattr(engine_args, "aggregate_engine_logging", False)
    return AsyncLLM.from_vllm_config(**kwargs)


async def build_openai_app(engine_client: Any, args: Namespace) -> Any:
    """vLLM's own OpenAI server app (routes, exception handlers, middleware) over ``engine_client``,
    with its state initialised exactly as ``vllm serve`` does."""
    reset = getattr(engine_client, "reset_mm_cache", None)
    if reset is not None:
        await reset()
    build_app = _first(
        ("vllm.entrypoints.launchers.app", "build_app"), ("vllm.entrypoints.openai.api_server", "build_app")
    )
    init_app_state = _first(
        ("vllm.entrypoints.launchers.api_server.app_state", "init_app_state"),
        ("vllm.entrypoints.openai.api_server", "init_app_state"),
    )
    supported_tasks = await engine_client.get_supported_tasks()
    log.info("vLLM supported tasks: %s", supported_tasks)
    app = build_app(args, supported_tasks, engine_client.model_config)
    await init_app_state(engine_client, app.state, args, supported_tasks)
    return app


def lifespan(app: Any) -> AbstractAsyncContextManager[Any]:
    """The app's own lifespan (vLLM's: periodic stats logging, GC freeze of the start-up heap)."""
    ctx: AbstractAsyncContextManager[Any] = app.router.lifespan_context(app)
    return ctx


def stat_logger_base() -> Any:
    return _first(("vllm.v1.metrics.loggers", "StatLoggerBase"))


def unfinished_requests(engine_client: Any) -> int:
    fn = getattr(engine_client, "get_num_unfinished_requests", None)
    if fn is None:
        fn = engine_client.output_processor.get_num_unfinished_requests
    return int(fn())


def iteration_observations(iteration_stats: Any) -> tuple[int, int, list[float], list[float]]:
    """(prompt tokens, generated tokens, TTFTs, per-request TPOTs) of one engine step's stats."""
    prompt = int(getattr(iteration_stats, "num_prompt_tokens", 0) or 0)
    generated = int(getattr(iteration_stats, "num_generation_tokens", 0) or 0)
    ttfts = [float(x) for x in getattr(iteration_stats, "time_to_first_tokens_iter", ()) or ()]
    tpots = []
    for fin in getattr(iteration_stats, "finished_requests", ()) or ():
        if int(getattr(fin, "num_generation_tokens", 0) or 0) > 1:
            tpot = float(getattr(fin, "mean_time_per_output_token", 0.0) or 0.0)
            if tpot > 0:
                tpots.append(tpot)
    return prompt, generated, ttfts, tpots
