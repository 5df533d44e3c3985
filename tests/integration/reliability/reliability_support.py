"""Support for the reliability suite: real runtime processes and OpenAI error-shape checks.

Each server is a real ``python -m infera_runtime`` subprocess on loopback, configured by
``INFERA_*`` environment variables as in a pod. They are session-scoped (a vLLM engine load
takes 20-35 s on 2 cores) and shared by the modules of this directory; a test that breaks one
(the engine-failure test) restarts it before it returns.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from infera_testenv.procs import start_server

REPO = Path(__file__).resolve().parents[3]

# The vLLM runtime admits few requests at once so that the load tests can overload it quickly.
VLLM_MAX_INFLIGHT = 2
VLLM_MAX_QUEUE = 2
MAX_MODEL_LEN = 512
# The synthetic runtime's request_timeout_s: bounds how long a slow client may hold a request.
SYNTHETIC_REQUEST_TIMEOUT_S = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RuntimeProcess:
    """One runtime server process; ``restart()`` plays the kubelet restarting the container."""

    def __init__(self, name: str, env: dict[str, str], ready_timeout_s: float = 240.0) -> None:
        self.name = name
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "INFERA_HOST": "127.0.0.1",
            "INFERA_PORT": str(self.port),
            "INFERA_LOG_FORMAT": "json",
            **env,
        }
        self.ready_timeout_s = ready_timeout_s
        fd, path = tempfile.mkstemp(prefix=f"reliability-{name}-", suffix=".log")
        os.close(fd)
        self.log = Path(path)
        self.termination_log = self.log.with_suffix(".termination")
        self.env["INFERA_TERMINATION_LOG"] = str(self.termination_log)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RuntimeProcess:
        with self.log.open("ab") as logf:
            self.proc = start_server(
                [sys.executable, "-m", "infera_runtime"], env=self.env, log=logf, cwd=REPO
            )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        last = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                r = httpx.get(self.base_url + "/health/ready", timeout=2)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready after {self.ready_timeout_s}s ({last}):\n{self.tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self) -> list[psutil.Process]:
        assert self.proc is not None
        try:
            return list(psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # nothing of the process group (the vLLM engine core) may outlive the server
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the /metrics samples called ``name`` whose labels include ``labels``."""
        text = httpx.get(self.base_url + "/metrics", timeout=10).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total


def install_crd(kubectl: Any) -> None:
    """Apply the InferenceService CRD (idempotent) and wait until the API server serves it.

    ``kubectl`` is ``Cluster.kubectl``."""
    crd = REPO / "crds" / "infera.dev_inferenceservices.yaml"
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/inferenceservices.infera.dev")
    # the API server needs a moment after Established before it serves the new type everywhere
    deadline = time.monotonic() + 60
    while kubectl("get", "infsvc", "-A", check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("the InferenceService API is not served 60 s after the CRD is Established")
        time.sleep(0.3)


def good_request(base_url: str, model: str) -> dict[str, Any]:
    """A small valid chat completion; asserts it succeeds and returns the body."""
    r = httpx.post(
        base_url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3},
        timeout=60,
    )
    assert r.status_code == 200, f"a good request failed: {r.status_code} {r.text[:500]}"
    body: dict[str, Any] = r.json()
    assert body["choices"][0]["message"]["role"] == "assistant"
    return body


def assert_openai_error(r: httpx.Response, statuses: tuple[int, ...] | None = None) -> dict[str, Any]:
    """A 4xx with OpenAI's error body: {"error": {"message": str, "type": str, "param", "code"}}."""
    if statuses is None:
        assert 400 <= r.status_code < 500, f"expected a 4xx, got {r.status_code}: {r.text[:500]}"
    else:
        assert r.status_code in statuses, f"expected {statuses}, got {r.status_code}: {r.text[:500]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err, dict), body
    assert {"message", "type", "param", "code"} <= set(err), body
    assert isinstance(err["message"], str) and err["message"].strip(), body
    assert isinstance(err["type"], str) and err["type"], body
    assert "Traceback" not in err["message"], body
    return err
