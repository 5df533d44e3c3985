"""Benchmark: the operator at scale on the real local control plane (kube-apiserver, etcd,
controller-manager, scheduler, kwok GPU nodes; kwok makes runtime pods Running and Ready).

Measures, with ``--count`` InferenceServices (default 500):

* apply -> Deployment created latency (p50/p99): client-side, from the create call's return to
  the Deployment's ADDED event on a watch started beforehand;
* apply -> Ready: when every InferenceService has condition Ready=True (and p50/p99 per object);
* API writes per no-op resync: the kube-apiserver audit log (policy: write verbs of the user
  ``infera-operator``; the operator runs with its own client certificate, so every write it makes,
  through kopf or its own client, is counted and nothing else is), (a) over a steady window of
  periodic resyncs (``INFERA_RESYNC_INTERVAL_SECONDS``) and (b) for a restart of the operator
  (kopf re-lists and resumes every object);
* operator RSS (psutil, the operator process) with N objects settled, and its peak (VmHWM).

Usage::

    .venv/bin/python e2e/bench/operator_scale.py                # 500 objects, ~5-8 min on 2 cores
    .venv/bin/python e2e/bench/operator_scale.py --count 50     # quick
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "e2e"))

from kubernetes import client, config, watch  # noqa: E402
from loadgen import format_table, percentile  # noqa: E402

from infera_testenv.cluster import Cluster, ClusterConfig  # noqa: E402

GROUP, VERSION, PLURAL = "infera.dev", "v1alpha1", "inferenceservices"
CRD_FILE = REPO / "crds" / "infera.dev_inferenceservices.yaml"
OPERATOR_USER = "infera-operator"
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
READ_VERBS = ("get", "list")
AUDIT_POLICY = f"""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
    users: ["{OPERATOR_USER}"]
    verbs: [{", ".join(WRITE_VERBS + READ_VERBS)}]
  - level: None
"""


class AuditedCluster(Cluster):
    """The test control plane with an audit log of the operator's writes and a user for it."""

    def __init__(self, cfg: ClusterConfig) -> None:
        super().__init__(cfg)
        self.audit_log = self.dir / "audit.log"
        policy = self.dir / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        cfg.extra_apiserver_args += [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=batch",
            "--audit-log-batch-max-wait=1s",
            "--audit-log-maxsize=1024",
        ]

    def user_kubeconfig(self, user: str) -> Path:
        """A kubeconfig for a client certificate CN=user (group system:masters, as the admin)."""
        pki = self.pki
        if not (pki / f"{user}.crt").exists():
            subprocess.run(
                ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{user}.key",
                 "-out", f"{user}.csr", "-subj", f"/O=system:masters/CN={user}"],
                cwd=pki, check=True, capture_output=True,
            )  # fmt: skip
            subprocess.run(
                ["openssl", "x509", "-req", "-in", f"{user}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{user}.crt", "-days", "30", "-extfile", "client.ext"],
                cwd=pki, check=True, capture_output=True,
            )  # fmt: skip
        path = self.dir / f"kubeconfig-{user}"
        self._write_kubeconfig(path, user)
        return path

    def audit_offset(self) -> int:
        time.sleep(2.5)  # let the batch backend flush what came before
        return self.audit_log.stat().st_size if self.audit_log.exists() else 0

    def audit_writes(self, since: int, verbs: tuple[str, ...] = WRITE_VERBS) -> collections.Counter[str]:
        """Operator requests (default: writes) logged after byte offset ``since``, by 'verb resource[/sub]'."""
        time.sleep(2.5)
        counts: collections.Counter[str] = collections.Counter()
        with self.audit_log.open("rb") as f:
            f.seek(since)
            for line in f:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("user", {}).get("username") != OPERATOR_USER or ev.get("verb") not in verbs:
                    continue
                ref = ev.get("objectRef", {})
                res = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
                counts[f"{ev['verb']} {res}"] += 1
        return counts


class Operator:
    def __init__(self, cluster: AuditedCluster, kubeconfig: Path, env: dict[str, str]) -> None:
        self.cluster = cluster
        self.kubeconfig = kubeconfig
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = (self.cluster.logs / "operator.log").open("ab")
        env = {
            **os.environ,
            **self.env,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": str(REPO / "operator"),
            "PYTHONUNBUFFERED": "1",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "infera_operator", "--all-namespaces", "--standalone"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._log:
            self._log.close()
        self.proc = None

    def rss(self) -> tuple[int, int]:
        """(RSS, peak RSS) in bytes of the operator process."""
        assert self.proc is not None
        p = psutil.Process(self.proc.pid)
        peak = 0
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
        return int(p.memory_info().rss), peak


def isvc(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "/models/tiny", "servedName": name},
            "engine": {"type": "synthetic"},
            "resources": {"gpus": 1},
            "replicas": 1,
        },
    }


class Watcher(threading.Thread):
    """Records the first time each object is seen (ADDED), and when an isvc first reports Ready."""

    def __init__(self, kind: str, namespace: str) -> None:
        super().__init__(daemon=True)
        self.kind = kind
        self.namespace = namespace
        self.first_seen: dict[str, float] = {}
        self.ready_at: dict[str, float] = {}
        self.stop_flag = threading.Event()
        self.started_ok = threading.Event()

    def run(self) -> None:
        rv = ""
        while not self.stop_flag.is_set():
            w = watch.Watch()  # type: ignore[no-untyped-call]
            if self.kind == "deployments":
                fn: Any = client.AppsV1Api().list_namespaced_deployment
                kwargs: dict[str, Any] = {"namespace": self.namespace}
            else:
                fn = client.CustomObjectsApi().list_namespaced_custom_object
                kwargs = {"group": GROUP, "version": VERSION, "namespace": self.namespace, "plural": PLURAL}
            try:
                if not rv:
                    lst = fn(**kwargs)
                    rv = (
                        lst["metadata"]["resourceVersion"]
                        if isinstance(lst, dict)
                        else lst.metadata.resource_version
                    )
                self.started_ok.set()
                for ev in w.stream(fn, resource_version=rv, timeout_seconds=60, **kwargs):  # type: ignore[no-untyped-call]
                    obj = ev["object"]
                    now = time.monotonic()
                    if isinstance(obj, dict):
                        name = obj["metadata"]["name"]
                        rv = obj["metadata"]["resourceVersion"]
                        conds = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
                        if conds.get("Ready") == "True":
                            self.ready_at.setdefault(name, now)
                    else:
                        name = obj.metadata.name
                        rv = obj.metadata.resource_version
                    self.first_seen.setdefault(name, now)
                    if self.stop_flag.is_set():
                        break
            except Exception as exc:  # a watch expiring (410) or a dropped connection: re-list
                print(f"[watch {self.kind}] {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                rv = ""
                time.sleep(0.5)


def wait_until(what: str, fn: Any, timeout: float, interval: float = 1.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if fn():
            return time.monotonic() - t0
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def fmt_counts(c: collections.Counter[str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(c.items())) or "none"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--resync", type=float, default=30.0, help="INFERA_RESYNC_INTERVAL_SECONDS for the run")
    ap.add_argument("--resyncs", type=int, default=2, help="periodic resyncs to count writes over")
    ap.add_argument("--timeout", type=float, default=900.0, help="most seconds to wait for all Ready")
    ap.add_argument("--workers", type=int, default=8, help="client threads applying the objects")
    args = ap.parse_args(argv)
    n = args.count
    per_node = 100  # the node manifest allows 110 pods
    nodes = max(1, math.ceil(n / per_node))
    t_start = time.monotonic()
    cluster = AuditedCluster(ClusterConfig(nodes=nodes, gpus_per_node=per_node))
    cluster.start()
    operator: Operator | None = None
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", "crd/inferenceservices.infera.dev"
        )
        ns = "bench"
        cluster.kubectl("create", "namespace", ns)
        config.load_kube_config(str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        operator = Operator(
            cluster,
            cluster.user_kubeconfig(OPERATOR_USER),
            {
                "INFERA_LOG_LEVEL": "warning",
                "INFERA_METRICS_INTERVAL_SECONDS": "5",
                "INFERA_RESYNC_INTERVAL_SECONDS": str(args.resync),
            },
        )
        operator.start()
        time.sleep(3)
        deploys = Watcher("deployments", ns)
        isvcs = Watcher("inferenceservices", ns)
        deploys.start()
        isvcs.start()
        deploys.started_ok.wait(30)
        isvcs.started_ok.wait(30)

        # ---------------------------------------------------------------- apply N
        api = client.CustomObjectsApi()
        applied: dict[str, float] = {}
        names = [f"svc-{i:04d}" for i in range(n)]

        def create(name: str) -> None:
            api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, isvc(name))
            applied[name] = time.monotonic()

        rollout_off = cluster.audit_offset()
        t_apply = time.monotonic()
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(create, names))
        apply_s = time.monotonic() - t_apply
        print(f"applied {n} InferenceServices in {apply_s:.1f}s", flush=True)
        wait_until(f"{n} Deployments", lambda: len(deploys.first_seen) >= n, args.timeout)
        print(f"all Deployments created after {time.monotonic() - t_apply:.1f}s", flush=True)
        wait_until(f"{n} Ready", lambda: len(isvcs.ready_at) >= n, args.timeout, interval=2)
        all_ready_s = time.monotonic() - t_apply
        print(f"all Ready after {all_ready_s:.1f}s", flush=True)
        rollout = cluster.audit_writes(rollout_off)
        if not rollout:
            raise RuntimeError(
                "the audit log shows no operator write for the rollout: the measurement is broken"
            )
        to_deploy = [deploys.first_seen[x] - applied[x] for x in names]
        to_ready = [isvcs.ready_at[x] - applied[x] for x in names]

        # ---------------------------------------------------------------- steady state: periodic resyncs
        time.sleep(min(args.resync, 20))  # let status writes of the rollout settle
        off = cluster.audit_offset()
        window = args.resync * args.resyncs
        print(f"counting operator writes over {window:.0f}s ({args.resyncs} periodic resyncs)", flush=True)
        time.sleep(window)
        steady = cluster.audit_writes(off)
        steady_reads = cluster.audit_writes(off, READ_VERBS)
        rss, peak = operator.rss()

        # ---------------------------------------------------------------- restart: a full resume resync
        operator.stop()
        off = cluster.audit_offset()
        operator.start()
        restart_window = max(30.0, n * 0.1)
        print(f"restarted the operator; counting writes over {restart_window:.0f}s", flush=True)
        time.sleep(restart_window)
        restart = cluster.audit_writes(off)
        restart_reads = cluster.audit_writes(off, READ_VERBS)
        rss2, peak2 = operator.rss()

        def ready(name: str) -> bool:
            obj: Any = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            conds = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
            return conds.get("Ready") == "True"

        not_ready = [x for x in names if not ready(x)]
        deploys.stop_flag.set()
        isvcs.stop_flag.set()

        steady_total = sum(steady.values())
        restart_total = sum(restart.values())
        print()
        print(
            f"operator_scale: {n} InferenceServices (engine synthetic, 1 GPU each) on {nodes} kwok nodes x "
            f"{per_node} GPUs; operator --all-namespaces --standalone, resync every {args.resync:.0f}s; "
            f"machine={platform.machine()} cpus={len(os.sched_getaffinity(0))}; "
            f"total {time.monotonic() - t_start:.0f}s"
        )
        rows: list[list[Any]] = [
            ["objects", n],
            ["apply (create) time for all, s", apply_s],
            ["apply -> Deployment created p50, s", percentile(to_deploy, 50)],
            ["apply -> Deployment created p99, s", percentile(to_deploy, 99)],
            ["apply -> Ready p50, s", percentile(to_ready, 50)],
            ["apply -> Ready p99, s", percentile(to_ready, 99)],
            ["apply of the first -> all Ready, s", all_ready_s],
            ["API writes to roll out all (create -> Ready)", sum(rollout.values())],
            ["  writes by verb", fmt_counts(rollout)],
            [f"API writes per periodic no-op resync ({args.resyncs} resyncs)", steady_total / args.resyncs],
            ["  per object per resync", steady_total / args.resyncs / n],
            ["  writes by verb (whole window)", fmt_counts(steady)],
            ["  reads in the window (evidence the resyncs ran)", fmt_counts(steady_reads)],
            ["API writes, operator restart (full resume)", restart_total],
            ["  writes by verb", fmt_counts(restart)],
            ["  reads", fmt_counts(restart_reads)],
            ["not Ready after the restart", len(not_ready)],
            ["operator RSS settled, MiB", rss / 2**20],
            ["operator peak RSS (VmHWM), MiB", peak / 2**20],
            ["operator RSS after restart + resume, MiB", rss2 / 2**20],
            ["  peak after restart, MiB", peak2 / 2**20],
        ]
        print(format_table(["measure", "value"], rows))
        return 0 if not not_ready else 1
    finally:
        if operator is not None:
            operator.stop()
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
