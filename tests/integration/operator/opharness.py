"""Helpers of the operator's integration tests: waiting, manifests, the operator as a process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from infera_testenv.cluster import REPO, Cluster, free_port

CRD_FILE = REPO / "crds" / "infera.dev_inferenceservices.yaml"
T = TypeVar("T")


def wait_for(what: str, fn: Callable[[], T], timeout: float = 60, interval: float = 0.3) -> T:
    deadline = time.monotonic() + timeout
    last: T = fn()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)
        last = fn()
    return last


def isvc(name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "infera.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {"model": {"uri": "/models/tiny"}, "resources": {"gpus": 1}, **(spec or {})},
    }


class OperatorProcess:
    def __init__(
        self, cluster: Cluster, env: dict[str, str], args: tuple[str, ...] = ("--all-namespaces",)
    ) -> None:
        self.cluster = cluster
        self.port = free_port()
        self.logpath = Path(cluster.dir) / "logs" / f"operator-{self.port}.log"
        self._log = open(self.logpath, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "infera_operator",
                *args,
                "--standalone",
                f"--liveness=http://127.0.0.1:{self.port}/healthz",
            ],
            env={
                **cluster.env(),
                "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), os.environ.get("PYTHONPATH", "")]),
                "PYTHONUNBUFFERED": "1",
                "INFERA_LOG_FORMAT": "text",
                **env,
            },
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for("the operator's liveness endpoint", self.alive, timeout=60)

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the operator exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def log(self) -> str:
        return self.logpath.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
