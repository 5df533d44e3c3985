"""Fixtures for the packaging tests: pinned tools from the cache (see packaging_support)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import packaging_support as ps
import pytest


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    path: Path = ps.helm()
    return path


@pytest.fixture(scope="session")
def hadolint_bin() -> Path:
    path: Path = ps.hadolint()
    return path


@pytest.fixture(scope="session")
def lua51() -> Any:
    return ps.lua51()


@pytest.fixture(scope="session")
def promql() -> Any:
    return ps.promql_parser()
