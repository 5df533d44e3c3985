"""Start and stop OpenAI servers (ours and raw vLLM) as real subprocesses on loopback, for the
benchmarks (``e2e/bench``) and the differential tests (``tests/differential``).

* :func:`runtime_server`: this checkout's runtime (``python -m infera_runtime``), configured
  by ``INFERA_*`` environment variables as in production;
* :func:`raw_vllm_server`: vLLM's own OpenAI server, started as ``vllm serve``.

Both yield the base URL once ``/v1/models`` answers, and stop the whole process group after.
Both run below the benchmark's priority (``infera_testenv.procs.start_server``): on a 2-core
machine the server would otherwise starve the load generator for seconds, and the client, not the
server, would set the pace.
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
from collections.abc import Iterator
from pathlib import Path

import httpx

from infera_testenv.procs import start_server

REPO = Path(__file__).resolve().parents[2]

# INFERA_SERVER_PYTHON runs both servers under another environment (another vLLM release).
PYTHON = os.environ.get("INFERA_SERVER_PYTHON") or (
    str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
)
TINY_MODEL = Path.home() / ".cache/infera/models/infera-tiny-llama-359bfd45d24bfbab"
VLLM_CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_model() -> Path:
    """The tiny test model (built offline by e2e/infera_testenv/tinymodel.py if missing)."""
    if (TINY_MODEL / "config.json").exists():
        return TINY_MODEL
    sys.path.insert(0, str(REPO / "e2e"))
    from infera_testenv import tinymodel

    return Path(tinymodel.build())


class Server:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int) -> None:
        self.name = name
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
        self._logf = self.log.open("wb")
        self.proc = start_server(
            argv,
            env={
                **os.environ,
                **env,
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(
                    [str(REPO / "runtime"), str(REPO / "e2e"), os.environ.get("PYTHONPATH", "")]
                ),
            },
            log=self._logf,
            cwd=REPO,
        )

    def wait_ready(self, timeout_s: float, path: str = "/v1/models") -> float:
        """Seconds until GET ``path`` answers 200; raises if the process exits or time runs out."""
        t0 = time.monotonic()
        last = ""
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                r = httpx.get(self.base_url + path, timeout=5)
                if r.status_code == 200:
                    return time.monotonic() - t0
                last = f"HTTP {r.status_code}"
            except httpx.TransportError as exc:
                last = type(exc).__name__
            time.sleep(0.3)
        raise TimeoutError(f"{self.name} not ready after {timeout_s}s (last: {last}):\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, grace_s: float = 20.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        else:
            # the leader is gone; make sure no child of its group (vLLM engine core) survives
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._logf.close()


@contextlib.contextmanager
def runtime_server(
    model: Path | str,
    served_name: str = "tiny",
    engine: str = "vllm",
    extra_env: dict[str, str] | None = None,
    ready_timeout_s: float = 240.0,
) -> Iterator[Server]:
    port = free_port()
    env = {
        **VLLM_CPU_ENV,
        "INFERA_MODEL": str(model),
        "INFERA_SERVED_MODEL_NAME": served_name,
        "INFERA_ENGINE": engine,
        "INFERA_HOST": "127.0.0.1",
        "INFERA_PORT": str(port),
        "INFERA_DTYPE": "float32",
        "INFERA_MAX_MODEL_LEN": "512",
        "INFERA_ENFORCE_EAGER": "true",
        "INFERA_TERMINATION_LOG": "/dev/null",
        **(extra_env or {}),
    }
    srv = Server(f"infera-{engine}", [PYTHON, "-m", "infera_runtime"], env, port)
    try:
        srv.wait_ready(ready_timeout_s)
        yield srv
    finally:
        srv.stop()


@contextlib.contextmanager
def raw_vllm_server(
    model: Path | str,
    served_name: str = "tiny",
    extra_args: list[str] | None = None,
    ready_timeout_s: float = 240.0,
) -> Iterator[Server]:
    port = free_port()
    argv = [
        PYTHON,
        "-m",
        "infera_testenv.vllm_cli",  # the `vllm` command of the same environment
        "serve",
        str(model),
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        "--enforce-eager",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        served_name,
        *(extra_args or []),
    ]
    srv = Server("raw-vllm", argv, dict(VLLM_CPU_ENV), port)
    try:
        srv.wait_ready(ready_timeout_s)
        yield srv
    finally:
        srv.stop()
