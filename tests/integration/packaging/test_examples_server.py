"""Every example in e2e/examples/ is accepted by a real API server with the CRD installed
(`kubectl apply --dry-run=server`: OpenAPI schema, defaults and the CEL validation rules)."""

from __future__ import annotations

import time
from pathlib import Path

import packaging_support as ps
import pytest

from infera_testenv.cluster import Cluster

pytestmark = pytest.mark.integration

EXAMPLES = sorted((ps.REPO / "e2e" / "examples").glob("*.yaml"))
CRD = ps.REPO / "crds" / "infera.dev_inferenceservices.yaml"


@pytest.fixture(scope="module")
def crd_installed(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/inferenceservices.infera.dev"
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_passes_server_side_validation(
    cluster: Cluster, namespace: str, crd_installed: None, path: Path
) -> None:
    proc = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False)
    assert proc.returncode == 0, proc.stderr
    assert "inferenceservice.infera.dev/" in proc.stdout and "(server dry run)" in proc.stdout


def test_server_rejects_a_broken_example(cluster: Cluster, namespace: str, crd_installed: None) -> None:
    """The dry run is live: tensorParallelSize not dividing gpus is refused by the CRD's CEL rule."""
    text = (ps.REPO / "e2e" / "examples" / "llama-70b-tp4.yaml").read_text().replace("gpus: 4", "gpus: 6")
    proc = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=text, check=False)
    assert proc.returncode != 0
    assert "tensorParallelSize must divide resources.gpus" in proc.stderr


def test_kubectl_explain_reads_the_schema_descriptions(cluster: Cluster, crd_installed: None) -> None:
    """The CRD's descriptions reach users through the API server's OpenAPI (kubectl explain), under
    the short name too."""
    out = ""
    for _ in range(30):  # the OpenAPI v3 document is published a moment after Established
        proc = cluster.kubectl("explain", "infsvc.spec.engine.maxModelLen", check=False)
        out = proc.stdout + proc.stderr
        if proc.returncode == 0:
            break
        time.sleep(1)
    assert "Maximum context length in tokens" in out, out
    top = cluster.kubectl("explain", "inferenceservices").stdout
    assert "OpenAI-compatible" in top and "GROUP:      infera.dev" in top, top
