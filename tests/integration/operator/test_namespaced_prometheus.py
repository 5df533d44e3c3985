"""An operator scoped to one namespace (--namespace) that reads throughput from a Prometheus
HTTP API (--prometheus-url) instead of scraping pods."""

from __future__ import annotations

import json
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opharness import OperatorProcess, isvc, wait_for

from infera_testenv.cluster import Cluster, free_port

pytestmark = pytest.mark.integration


class _Prometheus(BaseHTTPRequestHandler):
    """/api/v1/query answering the operator's PromQL for every pod it names."""

    queries: list[str] = []  # noqa: RUF012 - shared by the handler instances on purpose

    def do_GET(self) -> None:
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query).get("query", [""])[0]
        type(self).queries.append(query)
        pods = query.split('pod=~"', 1)[1].split('"', 1)[0].split("|") if 'pod=~"' in query else []
        value = (
            "42" if "infera_generation_tokens_total" in query
            else "1.5" if "infera_requests_total" in query
            else "2" if "infera_requests_in_flight" in query
            else "0.5" if "infera_kv_cache_usage_ratio" in query
            else None
        )  # fmt: skip
        result: list[dict[str, Any]] = []
        if value is not None:
            result = [{"metric": {"pod": p}, "value": [0, value]} for p in pods]
        elif "infera_time_to_first_token_seconds_bucket" in query:
            result = [
                {"metric": {"pod": p, "le": le}, "value": [0, v]}
                for p in pods
                for le, v in (("0.1", "4"), ("0.5", "10"), ("+Inf", "10"))
            ]
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def prometheus() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Prometheus)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def watched(crd: Cluster) -> Iterator[str]:
    name = f"w-{uuid.uuid4().hex[:8]}"
    crd.kubectl("create", "namespace", name)
    yield name
    crd.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def scoped_operator(crd: Cluster, watched: str, prometheus: str) -> Iterator[OperatorProcess]:
    op = OperatorProcess(
        crd,
        {"INFERA_METRICS_INTERVAL_SECONDS": "1", "INFERA_STATUS_MIN_INTERVAL_SECONDS": "1"},
        args=(f"--namespace={watched}", f"--prometheus-url={prometheus}"),
    )
    yield op
    op.stop()


def test_only_the_watched_namespace_is_reconciled_and_throughput_comes_from_prometheus(
    cluster: Cluster, namespace: str, watched: str, scoped_operator: OperatorProcess
) -> None:
    for ns in (watched, namespace):
        cluster.kubectl("apply", "--server-side", "-n", ns, "-f", "-", input=json.dumps(isvc("scoped")))
    cluster.kubectl(
        "wait",
        "-n",
        watched,
        "--for=condition=Ready",
        "--timeout=90s",
        "inferenceservice/scoped",
        timeout=100,
    )

    obj = wait_for(
        "throughput from Prometheus",
        lambda: (
            (o := json.loads(cluster.kubectl("get", "infsvc", "scoped", "-n", watched, "-o", "json").stdout))
            and (o["status"].get("throughput") or {}).get("pods") == 1
            and o
        ),
    )
    t = obj["status"]["throughput"]
    assert (t["generationTokensPerSecond"], t["requestsPerSecond"], t["inFlightRequests"]) == (42, 1.5, 2)
    assert t["kvCacheUsage"] == 0.5 and 0 < t["ttftSecondsP50"] <= t["ttftSecondsP95"] <= 0.5
    assert any(f'namespace="{watched}"' in q for q in _Prometheus.queries)
    assert not any(f'namespace="{namespace}"' in q for q in _Prometheus.queries)

    # the other namespace's InferenceService is not this operator's business
    other = json.loads(cluster.kubectl("get", "infsvc", "scoped", "-n", namespace, "-o", "json").stdout)
    assert "status" not in other
    assert cluster.kubectl("get", "deployment", "scoped", "-n", namespace, check=False).returncode != 0
