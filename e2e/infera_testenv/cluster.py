"""A real, local Kubernetes control plane for tests and the demo.

Starts upstream binaries built by ``e2e/cluster/build.sh`` on loopback, like controller-runtime's
envtest but with the controller manager and the scheduler too, and kwok simulating GPU nodes:

    etcd -> kube-apiserver -> kube-controller-manager + kube-scheduler -> kwok (fake nodes)

Certificates and service-account keys are generated locally (openssl). Deployments really go
Deployment -> ReplicaSet -> Pod -> scheduled -> Running/Ready; kwok plays the kubelet. Each kwok
node gets a podCIDR in 127.0.0.0/8, so a pod's IP is a loopback address on this machine where a
test harness can serve the pod's real process (see ``podsim``).

Library use::

    with Cluster(ClusterConfig(nodes=2, gpus_per_node=8)) as c:
        c.kubectl("get", "nodes")

CLI: ``python -m infera_testenv.cluster up [--dir DIR] [--nodes N] [--gpus G]`` runs in the
foreground until Ctrl-C and prints the kubeconfig path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "e2e" / "cluster" / "build.sh"
SERVICE_CIDR = "10.96.0.0/16"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


class ClusterError(RuntimeError):
    """The control plane could not be built, started or reached."""


def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def build_binaries() -> Path:
    """Build (or reuse from cache) the control plane binaries; return their directory."""
    if env := os.environ.get("INFERA_K8S_BIN"):
        return Path(env)
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode} (its output is above)")
    return Path(proc.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ClusterConfig:
    nodes: int = 2
    gpus_per_node: int = 8
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    cpu_per_node: str = "64"
    memory_per_node: str = "512Gi"
    pod_cidr_base: str = "127.10"  # node i gets 127.10.i.0/24
    workdir: Path | None = None
    verbose: bool = False
    extra_apiserver_args: list[str] = field(default_factory=list)
    # Pods matching this label selector are left alone by kwok, for a harness (podsim) that
    # plays the kubelet for them: runs their real process, reports status and readiness.
    kwok_disregard_label_selector: str = ""


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    logfile: IO[bytes]


class Cluster:
    def __init__(self, config: ClusterConfig | None = None) -> None:
        self.config = config or ClusterConfig()
        self._own_dir = self.config.workdir is None
        self.dir = Path(self.config.workdir or tempfile.mkdtemp(prefix="infera-cluster-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pki = self.dir / "pki"
        self.logs = self.dir / "logs"
        self.kubeconfig = self.dir / "kubeconfig"
        self.procs: list[_Proc] = []
        self.bin = Path()
        self.etcd_port = 0
        self.apiserver_port = 0
        self.started_s = 0.0

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def env(self) -> dict[str, str]:
        """Environment for subprocesses (kubectl, the operator) that should talk to this cluster."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def start(self) -> None:
        t0 = time.monotonic()
        self.bin = build_binaries()
        self.pki.mkdir(exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self._make_pki()
        self.etcd_port = free_port()
        self.apiserver_port = free_port()
        self._write_kubeconfig(self.kubeconfig, "admin")
        try:
            self._start_etcd()
            self._start_apiserver()
            self._start_controller_manager()
            self._start_scheduler()
            self._start_kwok()
            self.add_gpu_nodes(self.config.nodes, self.config.gpus_per_node)
            self._wait_default_serviceaccount()
        except BaseException:
            self.stop()
            raise
        self.started_s = time.monotonic() - t0
        log(f"control plane ready at {self.server} in {self.started_s:.1f}s (kubeconfig: {self.kubeconfig})")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in reversed(self.procs):
            try:
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
            p.logfile.close()
        self.procs.clear()
        if self._own_dir and not os.environ.get("INFERA_KEEP_CLUSTER_DIR"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def restart_apiserver(self, crash: bool = False, down_s: float = 0.0) -> None:
        """Stop kube-apiserver and start it again on the same port (for fault tests).

        ``crash``: SIGKILL (no graceful drain); otherwise SIGTERM, and SIGKILL if its graceful
        shutdown (which waits for open watches) outlasts 60 s. ``down_s``: keep it down that long."""
        for p in self.procs:
            if p.name == "kube-apiserver":
                if crash:
                    p.popen.kill()
                else:
                    p.popen.terminate()
                try:
                    p.popen.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.popen.kill()
                    p.popen.wait(timeout=30)
                p.logfile.close()
                self.procs.remove(p)
                break
        time.sleep(down_s)
        self._start_apiserver()

    # ------------------------------------------------------------------ kubectl helpers
    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["kubectl", f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def apply(self, manifest: dict[str, Any] | str, *extra: str) -> None:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        self.kubectl("apply", "-f", "-", *extra, input=text)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    # ------------------------------------------------------------------ nodes
    def add_gpu_nodes(self, count: int, gpus: int, start_index: int | None = None) -> list[str]:
        existing = self.get_json("nodes")["items"]
        first = len(existing) if start_index is None else start_index
        names = []
        for i in range(first, first + count):
            name = f"kwok-gpu-{i}"
            names.append(name)
            self.apply(self.node_manifest(name, i, gpus))
        self.kubectl("wait", "--for=condition=Ready", "--timeout=60s", *[f"node/{n}" for n in names])
        return names

    def node_manifest(self, name: str, index: int, gpus: int) -> dict[str, Any]:
        c = self.config
        capacity = {
            "cpu": c.cpu_per_node,
            "memory": c.memory_per_node,
            "pods": "110",
            "nvidia.com/gpu": str(gpus),
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    "nvidia.com/gpu.present": "true",
                    "nvidia.com/gpu.product": c.gpu_product,
                    "nvidia.com/gpu.count": str(gpus),
                },
            },
            "spec": {
                "podCIDR": f"{c.pod_cidr_base}.{index}.0/24",
                "podCIDRs": [f"{c.pod_cidr_base}.{index}.0/24"],
            },
            "status": {"capacity": capacity, "allocatable": capacity},
        }

    # ------------------------------------------------------------------ internals
    def _spawn(self, name: str, argv: Sequence[str]) -> _Proc:
        logfile = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        popen = subprocess.Popen(
            list(argv),
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        proc = _Proc(name, popen, logfile)
        self.procs.append(proc)
        return proc

    def _fail(self, name: str, why: str) -> ClusterError:
        tail = ""
        with contextlib.suppress(OSError):
            tail = "\n".join((self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-25:])
        return ClusterError(f"{name} {why}; last log lines:\n{tail}")

    def _wait(self, name: str, ok: Any, timeout: float = 60.0) -> None:
        proc = next(p for p in self.procs if p.name == name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise self._fail(name, f"exited with code {proc.popen.returncode}")
            with contextlib.suppress(Exception):
                if ok():
                    return
            time.sleep(0.2)
        raise self._fail(name, f"was not ready after {timeout:.0f}s")

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.pki, check=True, capture_output=True)

    def _make_pki(self) -> None:
        if (self.pki / "admin.crt").exists():
            return
        o = self._openssl
        o("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
          "-days", "3650", "-subj", "/CN=infera-test-ca")  # fmt: skip
        (self.pki / "server.ext").write_text(
            "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
            "extendedKeyUsage=serverAuth\n"
        )
        (self.pki / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
        for name, subj, ext in [
            ("server", "/CN=kube-apiserver", "server.ext"),
            ("admin", "/O=system:masters/CN=infera-admin", "client.ext"),
        ]:
            o(
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                f"{name}.key",
                "-out",
                f"{name}.csr",
                "-subj",
                subj,
            )
            o("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
              "-out", f"{name}.crt", "-days", "3650", "-extfile", ext)  # fmt: skip
        o("genrsa", "-out", "sa.key", "2048")
        o("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")

    def _write_kubeconfig(self, path: Path, user: str) -> None:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "infera",
                    "cluster": {"server": self.server, "certificate-authority": str(self.pki / "ca.crt")},
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate": str(self.pki / f"{user}.crt"),
                        "client-key": str(self.pki / f"{user}.key"),
                    },
                }
            ],
            "contexts": [
                {"name": "infera", "context": {"cluster": "infera", "user": user, "namespace": "default"}}
            ],
            "current-context": "infera",
        }
        path.write_text(json.dumps(cfg, indent=2))

    def _https_ok(self, path: str) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        with urllib.request.urlopen(f"{self.server}{path}", context=ctx, timeout=2) as r:
            return bool(r.status == 200)

    def _start_etcd(self) -> None:
        peer = free_port()
        self._spawn(
            "etcd",
            [
                str(self.bin / "etcd"),
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--quota-backend-bytes=4294967296",
            ],
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.etcd_port}/health", timeout=2) as r:
                return bool(json.loads(r.read()).get("health") == "true")

        self._wait("etcd", healthy, 30)

    def _start_apiserver(self) -> None:
        p = self.pki
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={p}",
                f"--tls-cert-file={p / 'server.crt'}",
                f"--tls-private-key-file={p / 'server.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1" if self.config.verbose else "--v=0",
                *self.config.extra_apiserver_args,
            ],
        )
        self._wait("kube-apiserver", lambda: self._https_ok("/readyz"), 90)

    def _start_controller_manager(self) -> None:
        p = self.pki
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--service-account-private-key-file={p / 'sa.key'}",
                f"--root-ca-file={p / 'ca.crt'}",
                f"--cluster-signing-cert-file={p / 'ca.crt'}",
                f"--cluster-signing-key-file={p / 'ca.key'}",
                "--use-service-account-credentials=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allocate-node-cidrs=false",
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route",
                # Deployments and HPAs react fast in tests.
                "--horizontal-pod-autoscaler-sync-period=5s",
                "--node-monitor-grace-period=60s",
                "--v=0",
            ],
        )

    def _start_scheduler(self) -> None:
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin / "kube-scheduler"),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--v=0",
            ],
        )

    def _start_kwok(self) -> None:
        self._spawn(
            "kwok",
            [
                str(self.bin / "kwok"),
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--manage-nodes-with-label-selector=",
                "--disregard-status-with-annotation-selector=kwok.x-k8s.io/status=custom",
                f"--disregard-status-with-label-selector={self.config.kwok_disregard_label_selector}",
                "--cidr=127.10.255.0/24",
                "--node-ip=127.0.0.1",
                "--node-lease-duration-seconds=40",
                "--server-address=127.0.0.1:0",
            ],
        )

    def _wait_default_serviceaccount(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0:
                return
            time.sleep(0.3)
        raise self._fail("kube-controller-manager", "created no default ServiceAccount")


@contextlib.contextmanager
def running(config: ClusterConfig | None = None) -> Iterator[Cluster]:
    c = Cluster(config)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m infera_testenv.cluster", description=__doc__.split("\n\n")[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the control plane and wait for Ctrl-C")
    up.add_argument("--dir", type=Path, help="working directory (default: a fresh temporary one)")
    up.add_argument("--nodes", type=int, default=2)
    up.add_argument("--gpus", type=int, default=8, help="nvidia.com/gpu per node")
    sub.add_parser("build", help="build or reuse the binaries and print their directory")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        print(build_binaries())
        return 0
    cfg = ClusterConfig(nodes=args.nodes, gpus_per_node=args.gpus, workdir=args.dir)
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with Cluster(cfg) as c:
        print(f"export KUBECONFIG={c.kubeconfig}", flush=True)
        while not stop:
            time.sleep(0.5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
