"""Engine failure: the vLLM engine process dies under a serving runtime.

The runtime must notice (readiness false, API requests refused with 503 rather than hanging),
exit non-zero with a reason in its termination log so the kubelet restarts the container, leave
no engine process behind, and serve again once restarted (the restart plays the kubelet).
"""

from __future__ import annotations

import signal
import time

import httpx
import psutil
import pytest
from reliability_support import RuntimeProcess, good_request

pytestmark = pytest.mark.integration


def engine_processes(runtime: RuntimeProcess) -> list[psutil.Process]:
    """The vLLM engine core process(es) under the runtime (vLLM names them ``VLLM::EngineCore``)."""
    found = []
    for p in runtime.children():
        try:
            text = p.name() + " " + " ".join(p.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "EngineCore" in text:
            found.append(p)
    return found


def test_engine_death_is_detected_and_restart_recovers(vllm_runtime: RuntimeProcess) -> None:
    good_request(vllm_runtime.base_url, "tiny")
    engines = engine_processes(vllm_runtime)
    assert engines, "no vLLM EngineCore child found: " + ", ".join(
        f"{c.pid}:{c.name()}" for c in vllm_runtime.children()
    )
    all_children = vllm_runtime.children()
    proc = vllm_runtime.proc
    assert proc is not None

    for e in engines:
        e.send_signal(signal.SIGKILL)

    # Until the process exits, it must not claim to be ready nor accept work.
    saw_not_ready = False
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            ready = httpx.get(vllm_runtime.base_url + "/health/ready", timeout=5)
            r = httpx.post(
                vllm_runtime.base_url + "/v1/completions",
                json={"model": "tiny", "prompt": "hi", "max_tokens": 2},
                timeout=30,
            )
        except httpx.TransportError:
            continue  # the server is going away
        if ready.status_code != 200:
            saw_not_ready = True
            assert r.status_code == 503, (r.status_code, r.text[:300])
            assert r.json()["error"]["type"] == "service_unavailable_error"
        time.sleep(0.2)
    rc = proc.wait(timeout=5)
    assert rc != 0, "the runtime exited 0 after its engine died"
    reason = vllm_runtime.termination_log.read_text() if vllm_runtime.termination_log.exists() else ""
    assert reason.strip(), "no reason in the termination log"
    # nothing of the old server is left running (no orphaned engine or worker)
    time.sleep(1)
    leftovers = [c for c in all_children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not leftovers, leftovers
    print(f"engine killed: exit code {rc}, saw readiness false: {saw_not_ready}, reason: {reason.strip()}")

    # The kubelet restarts the container: it loads and serves again.
    vllm_runtime.restart()
    good_request(vllm_runtime.base_url, "tiny")
    assert httpx.get(vllm_runtime.base_url + "/health/ready", timeout=5).status_code == 200
