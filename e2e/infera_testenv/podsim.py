"""Play the kubelet for runtime pods on kwok nodes: run each pod's real process on loopback.

kwok simulates nodes but runs nothing. For end-to-end scenarios this harness takes over the pods
that kwok is told to leave alone (``ClusterConfig.kwok_disregard_label_selector``) and does what a
kubelet would do for them, with the real runtime instead of a container image:

* gives the pod an IP from its node's podCIDR (127.10.N.0/24, loopback on this machine);
* materialises the pod's ConfigMap/Secret volumes and env into a per-pod directory, rewriting
  mount paths to it, and starts ``python -m infera_runtime`` bound to ``podIP:containerPort``;
* runs the pod's startup/readiness/liveness HTTP probes and reports ``Ready``/``ContainersReady``
  and container states (running, waiting CrashLoopBackOff with back-off, lastState.terminated
  with the termination message) through the pods/status subresource;
* stops the process when the pod is deleted, then removes the pod, as a kubelet does.

The image name is not pulled or checked: every pod runs this checkout's runtime.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from infera_testenv.cluster import REPO, Cluster
from infera_testenv.procs import start_server

RUNTIME_SELECTOR = "app.kubernetes.io/managed-by=infera-operator"
BACKOFF_START_S = 2.0
BACKOFF_MAX_S = 20.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def log(msg: str) -> None:
    print(f"[podsim] {msg}", file=sys.stderr, flush=True)


@dataclass
class Probe:
    path: str
    port: int
    period_s: float
    failure_threshold: int
    initial_delay_s: float = 0.0

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None, ports: dict[str, int], default_port: int) -> Probe | None:
        if not spec or "httpGet" not in spec:
            return None
        hg = spec["httpGet"]
        port = hg.get("port", default_port)
        port = ports.get(port, default_port) if isinstance(port, str) else int(port)
        return cls(
            path=hg.get("path", "/"),
            port=port,
            # probe at least once a second so scenarios do not wait on production periods
            period_s=min(float(spec.get("periodSeconds", 10)), 1.0),
            failure_threshold=int(spec.get("failureThreshold", 3)),
            initial_delay_s=min(float(spec.get("initialDelaySeconds", 0)), 1.0),
        )


@dataclass
class SimPod:
    namespace: str
    name: str
    uid: str
    node: str
    ip: str
    dir: Path
    container: str
    port: int
    startup: Probe | None
    readiness: Probe | None
    liveness: Probe | None
    grace_s: float
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    started: bool = False  # startup probe passed
    ready: bool = False
    restarts: int = 0
    last_terminated: dict[str, Any] | None = None
    waiting: dict[str, str] | None = None
    restart_at: float = 0.0
    liveness_failures: int = 0
    next_probe: float = 0.0
    last_reported: str = ""
    deleting: bool = False
    term_sent_at: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    transitions: dict[str, tuple[str, str]] = field(default_factory=dict)  # type -> (status, time)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class PodSimulator:
    def __init__(
        self,
        cluster: Cluster,
        selector: str = RUNTIME_SELECTOR,
        python: str = sys.executable,
        extra_env: dict[str, str] | None = None,
        workdir: Path | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self.cluster = cluster
        self.selector = selector
        self.python = python
        self.extra_env = extra_env or {}
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="infera-podsim-"))
        self.poll_s = poll_s
        self.pods: dict[str, SimPod] = {}  # by uid
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        # Any: the client's models are Optional everywhere; this harness reads what it just listed.
        self.core: Any = client.CoreV1Api(api_client)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> PodSimulator:
        self._thread = threading.Thread(target=self._run, name="podsim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
        with self._lock:
            for p in self.pods.values():
                self._terminate(p, force_after=10)
            self.pods.clear()

    def __enter__(self) -> PodSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_of(self, namespace: str, name: str) -> str:
        """The process output of a pod (all restarts), for diagnostics."""
        with contextlib.suppress(OSError):
            return (self.dir / f"{namespace}_{name}.log").read_text(errors="replace")
        return ""

    def endpoints(self) -> dict[str, str]:
        """Base URLs (http://ip:port) of the pods whose runtime is ready, by namespace/name."""
        with self._lock:
            return {p.key: f"http://{p.ip}:{p.port}" for p in self.pods.values() if p.ready}

    # ------------------------------------------------------------------ main loop
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as exc:  # keep playing kubelet through API hiccups
                log(f"tick failed: {exc!r}")
            self._stop.wait(self.poll_s)

    def _tick(self) -> None:
        items = self.core.list_pod_for_all_namespaces(label_selector=self.selector).items
        seen = set()
        with self._lock:
            for pod in items:
                uid = pod.metadata.uid
                seen.add(uid)
                sim = self.pods.get(uid)
                if sim is None:
                    if pod.metadata.deletion_timestamp is not None:
                        self._finish_delete(pod.metadata.namespace, pod.metadata.name)
                        continue
                    if not pod.spec.node_name:
                        continue  # not scheduled (e.g. Pending for GPUs): nothing to run
                    sim = self._admit(pod, items)
                    self.pods[uid] = sim
                if pod.metadata.deletion_timestamp is not None and not sim.deleting:
                    sim.deleting = True
                    log(f"{sim.key}: deleting, stopping the runtime")
                    self._terminate(sim, force_after=sim.grace_s, wait=False)
                self._step(sim)
            for uid in list(self.pods):
                if uid not in seen:  # gone from the API (force-deleted)
                    self._terminate(self.pods.pop(uid), force_after=5)

    # ------------------------------------------------------------------ admission
    def _admit(self, pod: Any, all_pods: list[Any]) -> SimPod:
        ns, name = pod.metadata.namespace, pod.metadata.name
        ip = pod.status.pod_ip or self._allocate_ip(pod.spec.node_name, all_pods)
        c = pod.spec.containers[0]
        ports = {p.name: p.container_port for p in (c.ports or []) if p.name}
        port = next(iter(ports.values()), 8000) if ports else 8000
        spec = self.core.api_client.sanitize_for_serialization(c)
        pod_dir = self.dir / pod.metadata.uid
        pod_dir.mkdir(parents=True, exist_ok=True)
        sim = SimPod(
            namespace=ns,
            name=name,
            uid=pod.metadata.uid,
            node=pod.spec.node_name,
            ip=ip,
            dir=pod_dir,
            container=c.name,
            port=port,
            startup=Probe.from_spec(spec.get("startupProbe"), ports, port),
            readiness=Probe.from_spec(spec.get("readinessProbe"), ports, port),
            liveness=Probe.from_spec(spec.get("livenessProbe"), ports, port),
            grace_s=float(min(pod.spec.termination_grace_period_seconds or 30, 30)),
        )
        sim.env = self._materialise(pod, spec, sim)
        log(f"{sim.key}: scheduled on {sim.node}, ip {ip}, port {port}")
        self._spawn(sim)
        return sim

    def _allocate_ip(self, node_name: str, all_pods: list[Any]) -> str:
        node = self.core.read_node(node_name)
        net = ipaddress.ip_network(node.spec.pod_cidr)
        used = {p.status.pod_ip for p in all_pods if p.status and p.status.pod_ip}
        used |= {p.ip for p in self.pods.values()}
        for host in list(net.hosts())[1:]:  # .1 is the "gateway"
            if str(host) not in used:
                return str(host)
        raise RuntimeError(f"no free pod IP on {node_name} ({net})")

    def _materialise(self, pod: Any, c: dict[str, Any], sim: SimPod) -> dict[str, str]:
        """Write ConfigMap/Secret volumes to disk; return the process env with paths remapped."""
        ns = sim.namespace
        volumes = {
            v["name"]: v for v in self.core.api_client.sanitize_for_serialization(pod.spec.volumes or [])
        }
        mounts: dict[str, Path] = {}
        for m in c.get("volumeMounts", []):
            vol = volumes.get(m["name"], {})
            target = sim.dir / "mounts" / m["mountPath"].strip("/").replace("/", "_")
            target.mkdir(parents=True, exist_ok=True)
            files: dict[str, bytes] = {}
            if "configMap" in vol:
                cm = self.core.read_namespaced_config_map(vol["configMap"]["name"], ns)
                files = {k: v.encode() for k, v in (cm.data or {}).items()}
            elif "secret" in vol:
                sec = self.core.read_namespaced_secret(vol["secret"]["secretName"], ns)
                files = {k: base64.b64decode(v) for k, v in (sec.data or {}).items()}
            else:
                mounts[m["mountPath"]] = target  # emptyDir and the like: an empty directory
                continue
            for item in (vol.get("configMap") or vol.get("secret") or {}).get("items") or []:
                if item["key"] in files:
                    files[item["path"]] = files.pop(item["key"])
            for fname, data in files.items():
                (target / fname).parent.mkdir(parents=True, exist_ok=True)
                (target / fname).write_bytes(data)
            mounts[m["mountPath"]] = target

        def remap(value: str) -> str:
            for mount_path, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
                if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                    return str(local) + value[len(mount_path.rstrip("/")) :]
            return value

        # Paths inside JSON config files (e.g. api_key_file) point at mounts too.
        for local in mounts.values():
            for f in local.glob("*.json"):
                with contextlib.suppress(ValueError):
                    doc = json.loads(f.read_text())
                    if isinstance(doc, dict):
                        f.write_text(
                            json.dumps({k: remap(v) if isinstance(v, str) else v for k, v in doc.items()})
                        )

        env: dict[str, str] = {}
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = remap(str(e["value"]))
            elif ref := (e.get("valueFrom") or {}).get("secretKeyRef"):
                with contextlib.suppress(ApiException, KeyError, TypeError):
                    sec = self.core.read_namespaced_secret(ref["name"], ns)
                    env[e["name"]] = base64.b64decode(sec.data[ref["key"]]).decode()
            elif ref := (e.get("valueFrom") or {}).get("configMapKeyRef"):
                with contextlib.suppress(ApiException, KeyError, TypeError):
                    env[e["name"]] = self.core.read_namespaced_config_map(ref["name"], ns).data[ref["key"]]
        return env

    # ------------------------------------------------------------------ process
    def _spawn(self, sim: SimPod) -> None:
        env = {
            **os.environ,
            **sim.env,
            **self.extra_env,
            "INFERA_HOST": sim.ip,
            "INFERA_PORT": str(sim.port),
            "INFERA_TERMINATION_LOG": str(sim.dir / "termination-log"),
            "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
        }
        with contextlib.suppress(OSError):
            (sim.dir / "termination-log").unlink()
        logf = open(self.dir / f"{sim.namespace}_{sim.name}.log", "ab")  # noqa: SIM115 - owned by the child
        logf.write(f"--- start {_now()} (restart {sim.restarts})\n".encode())
        logf.flush()
        sim.proc = start_server([self.python, "-m", "infera_runtime"], env=env, log=logf)
        logf.close()
        sim.started_at = _now()
        sim.started = sim.startup is None
        sim.ready = False
        sim.waiting = None
        sim.liveness_failures = 0
        sim.next_probe = (
            time.monotonic() + (sim.startup or sim.readiness or Probe("/", 0, 1, 1)).initial_delay_s
        )

    def _terminate(self, sim: SimPod, force_after: float, wait: bool = True) -> None:
        p = sim.proc
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        sim.term_sent_at = time.monotonic()
        if wait:
            try:
                p.wait(timeout=force_after)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def _termination_message(self, sim: SimPod) -> str:
        with contextlib.suppress(OSError):
            msg = (sim.dir / "termination-log").read_text(errors="replace").strip()
            if msg:
                return msg[-4096:]
        # terminationMessagePolicy FallbackToLogsOnError: the log's last lines
        lines = [ln for ln in self.log_of(sim.namespace, sim.name).splitlines() if ln.strip()]
        return "\n".join(lines[-5:])[-2048:]

    # ------------------------------------------------------------------ kubelet loop for one pod
    def _step(self, sim: SimPod) -> None:
        now = time.monotonic()
        p = sim.proc
        if sim.deleting:
            if p is not None and p.poll() is None and now - sim.term_sent_at > sim.grace_s:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            if p is None or p.poll() is not None:
                self._finish_delete(sim.namespace, sim.name)
                self.pods.pop(sim.uid, None)
            return
        if p is not None and p.poll() is not None:  # the container exited
            code = p.returncode
            message = self._termination_message(sim)
            sim.last_terminated = {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "message": message,
                "startedAt": sim.started_at,
                "finishedAt": _now(),
            }
            backoff = min(BACKOFF_START_S * 2**sim.restarts, BACKOFF_MAX_S)
            sim.restarts += 1
            sim.proc = None
            sim.ready = sim.started = False
            sim.restart_at = now + backoff
            sim.waiting = {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {backoff:.0f}s restarting failed container={sim.container} pod={sim.name}",
            }
            log(f"{sim.key}: runtime exited with {code}: {message.splitlines()[-1] if message else ''}")
        if sim.proc is None and now >= sim.restart_at:
            self._spawn(sim)
        if sim.proc is not None and now >= sim.next_probe:
            self._probe(sim, now)
        self._report(sim)

    def _http_ok(self, sim: SimPod, probe: Probe) -> bool:
        try:
            with urllib.request.urlopen(f"http://{sim.ip}:{probe.port}{probe.path}", timeout=1) as r:
                return bool(200 <= r.status < 400)
        except Exception:
            return False

    def _probe(self, sim: SimPod, now: float) -> None:
        if not sim.started:
            assert sim.startup is not None
            sim.next_probe = now + sim.startup.period_s
            if self._http_ok(sim, sim.startup):
                sim.started = True
                log(f"{sim.key}: started")
            else:
                return
        if sim.readiness is not None:
            sim.ready = self._http_ok(sim, sim.readiness)
            sim.next_probe = now + sim.readiness.period_s
        else:
            sim.ready = True
        if sim.liveness is not None:
            if self._http_ok(sim, sim.liveness):
                sim.liveness_failures = 0
            else:
                sim.liveness_failures += 1
                if sim.liveness_failures >= sim.liveness.failure_threshold:
                    log(f"{sim.key}: liveness probe failed {sim.liveness_failures} times, restarting")
                    self._terminate(sim, force_after=sim.grace_s)

    def _report(self, sim: SimPod) -> None:
        running = sim.proc is not None and sim.proc.poll() is None
        state: dict[str, Any]
        if running:
            state = {"running": {"startedAt": sim.started_at}}
        else:
            state = {"waiting": sim.waiting or {"reason": "ContainerCreating"}}
        cs: dict[str, Any] = {
            "name": sim.container,
            "ready": sim.ready,
            "started": sim.started and running,
            "restartCount": sim.restarts,
            "image": "infera-runtime:podsim",
            "imageID": "",
            "containerID": f"podsim://{sim.proc.pid if sim.proc else 0}",
            "state": state,
        }
        if sim.last_terminated:
            cs["lastState"] = {"terminated": sim.last_terminated}
        ready = "True" if sim.ready else "False"

        def cond(t: str, s: str, reason: str | None = None) -> dict[str, Any]:
            c: dict[str, Any] = {"type": t, "status": s}
            if reason and s == "False":
                c["reason"] = reason
            return c

        status: dict[str, Any] = {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": sim.ip,
            "podIPs": [{"ip": sim.ip}],
            "conditions": [
                cond("PodScheduled", "True"),
                cond("Initialized", "True"),
                cond("ContainersReady", ready, "ContainersNotReady"),
                cond("Ready", ready, "ContainersNotReady"),
            ],
            "containerStatuses": [cs],
        }
        fingerprint = json.dumps(status, sort_keys=True)
        if fingerprint == sim.last_reported:
            return
        stamp = _now()
        for c in status["conditions"]:
            prev = sim.transitions.get(c["type"])
            if prev is None or prev[0] != c["status"]:
                sim.transitions[c["type"]] = (c["status"], stamp)
            c["lastTransitionTime"] = sim.transitions[c["type"]][1]
        body = {"status": {**status, "startTime": sim.started_at}}
        try:
            self.core.patch_namespaced_pod_status(sim.name, sim.namespace, body)
            sim.last_reported = fingerprint
        except ApiException as exc:
            if exc.status != 404:
                log(f"{sim.key}: status patch failed: {exc.status} {exc.reason}")

    def _finish_delete(self, namespace: str, name: str) -> None:
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)

    def cleanup_dir(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
