"""Packaging integration tests reuse the unit tier's tool helpers (tests/unit/packaging/packaging_support.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_SUPPORT = Path(__file__).resolve().parents[2] / "unit" / "packaging"
if str(_SUPPORT) not in sys.path:
    sys.path.insert(0, str(_SUPPORT))

import packaging_support as ps  # noqa: E402


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    path: Path = ps.helm()
    return path
