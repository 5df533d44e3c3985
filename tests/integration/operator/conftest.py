"""Fixtures for the operator's integration tests: the CRD on the real control plane, and the
operator as a real process (``python -m infera_operator``), one per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opharness import CRD_FILE, OperatorProcess, wait_for

from infera_testenv.cluster import Cluster


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> Cluster:
    cluster.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/inferenceservices.infera.dev"
    )
    # The API server needs a moment after Established before it serves the new type everywhere.
    wait_for(
        "the InferenceService API",
        lambda: cluster.kubectl("get", "infsvc", "-A", check=False).returncode == 0,
    )
    return cluster


@pytest.fixture(scope="module")
def operator(crd: Cluster) -> Iterator[OperatorProcess]:
    op = OperatorProcess(
        crd,
        {
            "INFERA_METRICS_INTERVAL_SECONDS": "1",
            "INFERA_METRICS_WINDOW_SECONDS": "10",
            "INFERA_STATUS_MIN_INTERVAL_SECONDS": "1",
            "INFERA_RESYNC_INTERVAL_SECONDS": "2",
            "INFERA_RUNTIME_IMAGE": "registry.example/infera-runtime:test",
        },
    )
    try:
        yield op
    finally:
        op.stop()
        if any(line for line in op.log().splitlines() if "Traceback" in line):
            print(f"operator log ({op.logpath}) has tracebacks:\n{op.log()[-4000:]}")
