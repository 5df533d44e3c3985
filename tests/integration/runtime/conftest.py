"""Integration fixtures for the runtime: the tiny model and ``python -m infera_runtime`` processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infera_testenv.procs import start_server

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RuntimeProcess:
    """One ``python -m infera_runtime`` process on a free loopback port, logging to a file."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "runtime.log"
        self.termination_log = workdir / "termination-log"
        full = {
            **{k: v for k, v in os.environ.items() if not k.startswith("INFERA_")},
            "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
            "INFERA_HOST": "127.0.0.1",
            "INFERA_PORT": str(self.port),
            "INFERA_TERMINATION_LOG": str(self.termination_log),
            **env,
        }
        with open(self.log_path, "wb") as log:
            self.proc = start_server([sys.executable, "-m", "infera_runtime"], env=full, log=log)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"runtime exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"runtime not ready after {timeout_s}s:\n{self.log_tail()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture(scope="module")
def runtime_process_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[type[RuntimeProcess]]:
    started: list[RuntimeProcess] = []

    class Factory(RuntimeProcess):
        def __init__(self, env: dict[str, str]) -> None:
            super().__init__(tmp_path_factory.mktemp("runtime"), env)
            started.append(self)

    yield Factory
    for p in started:
        p.stop()
