"""Shared e2e fixtures: one whole stack (control plane, operator, podsim) per pytest session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infera_testenv.stack import Stack

pytest_plugins = ["infera_testenv.pytest_plugin"]


@pytest.fixture(scope="session")
def model(tiny_model: Path) -> Path:
    return tiny_model


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    # HF_HUB_OFFLINE: a model path that does not exist fails at once instead of trying a hub.
    with Stack(runtime_env={"HF_HUB_OFFLINE": "1"}) as s:
        yield s
