"""Engines: vLLM (``engine="vllm"``) and the synthetic one (``engine="synthetic"``)."""

from __future__ import annotations

from ..settings import RuntimeSettings
from .base import Engine, EngineOutput, EngineRequest, EngineStats, SamplingOptions


def make_engine(settings: RuntimeSettings) -> Engine:
    """The engine named by ``settings.engine`` (not started). Raises ValueError on bad engine_args."""
    if settings.engine == "synthetic":
        from .synthetic import SyntheticConfig, SyntheticEngine

        return SyntheticEngine(SyntheticConfig.from_args(settings.engine_args, settings.max_model_len))
    from .vllm_engine import VllmEngine, build_engine_args

    build_engine_args(settings)  # fail fast on unknown engine_args
    return VllmEngine(settings)


__all__ = ["Engine", "EngineOutput", "EngineRequest", "EngineStats", "SamplingOptions", "make_engine"]
