"""Backends: vLLM's own OpenAI server (``engine="vllm"``) and the synthetic one (``engine="synthetic"``)."""

from __future__ import annotations

from ..settings import RuntimeSettings
from .base import Backend, Engine, EngineOutput, EngineRequest, EngineStats, SamplingOptions


def make_backend(settings: RuntimeSettings) -> Backend:
    """The backend named by ``settings.engine`` (not started). Raises ValueError on bad settings."""
    if settings.engine == "synthetic":
        from ..serving import SyntheticBackend
        from .synthetic import SyntheticConfig, SyntheticEngine

        engine = SyntheticEngine(SyntheticConfig.from_args(settings.engine_args, settings.max_model_len))
        return SyntheticBackend(settings, engine)
    from .vllm_engine import VllmBackend

    return VllmBackend(settings)  # parses the vLLM serve arguments: fails fast on bad ones


__all__ = [
    "Backend",
    "Engine",
    "EngineOutput",
    "EngineRequest",
    "EngineStats",
    "SamplingOptions",
    "make_backend",
]
