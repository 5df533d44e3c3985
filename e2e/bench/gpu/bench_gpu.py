"""GPU benchmark: raw ``vllm serve`` vs our runtime as the operator renders it, on one GPU.

Runs on the GPU machine (``e2e/bench/gpu/README.md`` says how the wheels get there). Steps:

1. ``model``: an 8B-shaped model directory (Llama-3-8B's ``config.json``; a word-level tokenizer
   of 128 256 tokens built here; no weights: every server loads it with ``--load-format dummy``,
   random weights, so nothing is downloaded).
2. The runtime's pod as the operator renders it for ``e2e/examples/chat-7b-1gpu.yaml``: the
   ConfigMap's ``runtime.json`` and the container's environment from ``render_children``, with
   only the model swapped for the dummy one (``model`` and ``engine_args.load_format``); its
   startup, readiness and liveness probe endpoints must answer 200 before it is measured.
3. Raw ``vllm serve`` with the same engine flags (and again with ``--api-server-count 2``), and
   ours, one at a time, each loaded by ``vllm bench serve`` (vLLM's own client, random
   dataset, 512 prompt / 256 output tokens, ``--ignore-eos``) at each concurrency; ours also
   reports its own ``/metrics`` TTFT (mean over each level) beside the client's.

It prints one table per endpoint (output tokens/s, TTFT, TPOT, ITL and end-to-end p50/p99,
ours/raw) and writes every result under ``--out``. Rounds alternate the server order while the
time budget lasts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 16384,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "vocab_size": 128256,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "torch_dtype": "bfloat16",
}
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant {% endif %}"
)


def build_model(directory: Path) -> Path:
    """The dummy 8B-shaped model (config and tokenizer only)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2}
    vocab.update({f"w{i}": i for i in range(3, LLAMA3_8B["vocab_size"])})  # type: ignore[arg-type]
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "model_max_length": 16384,
                "chat_template": CHAT_TEMPLATE,
            }
        )
    )
    (directory / "config.json").write_text(json.dumps(LLAMA3_8B, indent=1))
    return directory


def rendered_pod(model: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(runtime.json, environment) of the pod the operator renders for chat-7b-1gpu.yaml."""
    sys.path[:0] = [str(REPO / "operator")]
    import yaml  # type: ignore[import-untyped]

    from infera_operator import render

    cr = yaml.safe_load((REPO / "e2e/examples/chat-7b-1gpu.yaml").read_text())
    cr["metadata"].update(namespace="default", uid="00000000-0000-0000-0000-000000000000")
    children = dict(render.render_children(cr))
    conf = json.loads(next(iter(children["ConfigMap"]["data"].values())))  # type: ignore[index]
    container = children["Deployment"]["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    conf["model"] = str(model)
    conf["engine_args"] = {**conf.get("engine_args", {}), "load_format": "dummy"}
    probes = {k: container[k]["httpGet"]["path"] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    conf["_probes"] = probes
    return conf, env


class Proc:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path, port: int) -> None:
        self.name, self.port, self.log = name, port, log
        self.proc = subprocess.Popen(
            argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait(self, path: str, timeout_s: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r,
            ):
                if r.status == 200:
                    return time.monotonic() - t0
            time.sleep(1)
        raise TimeoutError(f"{self.name} not ready in {timeout_s}s:\n{self.tail()}")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def engine_flags(conf: dict[str, Any]) -> list[str]:
    """``vllm serve`` flags equal to the rendered runtime settings (for the raw anchor)."""
    flags = [
        "--dtype", conf["dtype"],
        "--gpu-memory-utilization", str(conf["gpu_memory_utilization"]),
        "--max-model-len", str(conf["max_model_len"]),
        "--served-model-name", conf["served_model_name"],
        "--load-format", "dummy",
    ]  # fmt: skip
    if conf.get("tool_call_parser"):
        flags += ["--tool-call-parser", conf["tool_call_parser"]]
    if conf.get("enable_auto_tool_choice"):
        flags.append("--enable-auto-tool-choice")
    if conf.get("engine_args", {}).get("enable_prefix_caching"):
        flags.append("--enable-prefix-caching")
    return flags


def variant_settings(key: str) -> dict[str, Any]:
    """``ours:max_num_batched_tokens=8192,max_num_seqs=128`` -> those runtime settings (ints)."""
    _, _, spec = key.partition(":")
    out: dict[str, Any] = {}
    for item in filter(None, spec.split(",")):
        name, _, value = item.partition("=")
        out[name] = int(value) if value.isdigit() else value
    return out


def metric_sum_count(text: str, name: str) -> tuple[float, float]:
    s = c = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_sum"):
            s = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count"):
            c = float(line.rsplit(" ", 1)[1])
    return s, c


def bench(srv: Proc, model: Path, served: str, c: int, out: Path, backend: str, tag: str) -> dict[str, Any]:
    n = max(8, 2 * c) if c > 1 else 8
    name = f"{tag}-{backend}-c{c}.json"
    endpoint = "/v1/chat/completions" if backend == "openai-chat" else "/v1/completions"
    argv = [
        sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "serve",
        "--backend", backend, "--base-url", f"http://127.0.0.1:{srv.port}", "--endpoint", endpoint,
        "--model", served, "--tokenizer", str(model), "--dataset-name", "random",
        "--random-input-len", "512", "--random-output-len", "256", "--ignore-eos",
        "--num-prompts", str(n), "--max-concurrency", str(c), "--request-rate", "inf",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        "--save-result", "--result-dir", str(out), "--result-filename", name, "--seed", "1",
    ]  # fmt: skip
    before = srv.get("/metrics")[1]
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ})
    if proc.returncode != 0:
        raise RuntimeError(
            f"vllm bench serve failed for {tag} c={c}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads((out / name).read_text())
    after = srv.get("/metrics")[1]
    s0, c0 = metric_sum_count(before, "infera_time_to_first_token_seconds")
    s1, c1 = metric_sum_count(after, "infera_time_to_first_token_seconds")
    if c1 > c0:
        result["server_ttft_mean_ms"] = (s1 - s0) / (c1 - c0) * 1000
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu-bench")))
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/dummy-llama3-8b"))
    ap.add_argument("--concurrency", default="1,32,128,256")
    ap.add_argument("--backends", default="openai", help="openai (completions) and/or openai-chat")
    ap.add_argument(
        "--servers",
        default="raw,ours,raw2",
        help="raw, raw2 (--api-server-count 2), ours, or ours:SETTING=V,... (the rendered settings changed)",
    )
    ap.add_argument("--budget-s", type=float, default=480.0, help="start no new round after this")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    model = build_model(args.model_dir)
    conf, pod_env = rendered_pod(model)
    probes = conf.pop("_probes")
    (args.out / "runtime.json").write_text(json.dumps(conf, indent=1, sort_keys=True))
    levels = [int(x) for x in args.concurrency.split(",")]
    backends = args.backends.split(",")
    base_env = {**os.environ, "VLLM_USE_FLASHINFER_SAMPLER": "0", "PYTHONUNBUFFERED": "1"}
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    starts: dict[str, list[float]] = {}
    order = args.servers.split(",")
    for rnd in range(args.rounds):
        if rnd and time.monotonic() - t_start > args.budget_s:
            print(f"time budget reached after {rnd} round(s)", flush=True)
            break
        for key in order if rnd % 2 == 0 else list(reversed(order)):
            port = 8100 + 10 * order.index(key) + rnd
            log = args.out / f"{key}-r{rnd}.log"
            if key.startswith("ours"):
                cfg = args.out / f"runtime-{key.replace(':', '_').replace('=', '-')}.json"
                cfg.write_text(json.dumps({**conf, **variant_settings(key)}, indent=1, sort_keys=True))
                env = {**base_env, **{k: v for k, v in pod_env.items() if k not in ("HOME", "HF_HOME")}}
                env.update(
                    {"INFERA_CONFIG_FILE": str(cfg), "INFERA_PORT": str(port), "INFERA_HOST": "127.0.0.1"}
                )
                env["INFERA_TERMINATION_LOG"] = str(args.out / "termination-log")
                env["PYTHONPATH"] = os.pathsep.join([str(REPO / "runtime"), env.get("PYTHONPATH", "")])
                srv = Proc(key, [sys.executable, "-m", "infera_runtime"], env, log, port)
                ready_path = probes["readinessProbe"]
            else:
                extra = ["--api-server-count", "2"] if key == "raw2" else []
                srv_argv = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(model),
                            *engine_flags(conf), "--host", "127.0.0.1", "--port", str(port), *extra]  # fmt: skip
                srv = Proc(key, srv_argv, base_env, log, port)
                ready_path = "/health"
            try:
                took = srv.wait(ready_path, 600)
                starts.setdefault(key, []).append(took)
                if key.startswith("ours"):
                    codes = {k: srv.get(p)[0] for k, p in probes.items()}
                    print(
                        f"ours: rendered pod ready in {took:.0f}s; probe endpoints {probes} -> {codes}",
                        flush=True,
                    )
                    assert set(codes.values()) == {200}, codes
                else:
                    print(f"{key}: ready in {took:.0f}s", flush=True)
                for backend in backends:
                    bench(srv, model, conf["served_model_name"], 1, args.out, backend, f"{key}-warm")
                    for c in levels:
                        r = bench(
                            srv, model, conf["served_model_name"], c, args.out, backend, f"{key}-r{rnd}"
                        )
                        results.setdefault(f"{key}|{backend}", {}).setdefault(str(c), []).append(r)
                        print(
                            f"  {key:5s} {backend:11s} c={c:<4d} {r['output_throughput']:8.0f} tok/s "
                            f"TTFT p50 {r['median_ttft_ms']:7.1f} ms TPOT p50 {r['median_tpot_ms']:6.2f} ms"
                            + (
                                f" server TTFT mean {r['server_ttft_mean_ms']:.1f} ms"
                                if "server_ttft_mean_ms" in r
                                else ""
                            ),
                            flush=True,
                        )
            finally:
                srv.stop()
    (args.out / "results.json").write_text(json.dumps({"results": results, "starts": starts}, indent=1))
    print_tables(results, levels, backends, order)
    return 0


def _med(rs: list[dict[str, Any]], key: str) -> float:
    vals = sorted(float(r.get(key, float("nan"))) for r in rs)
    return vals[(len(vals) - 1) // 2] if vals else float("nan")


def print_tables(
    results: dict[str, dict[str, list[dict[str, Any]]]],
    levels: list[int],
    backends: list[str],
    order: list[str],
) -> None:
    for backend in backends:
        print(f"\n{backend} (512 in / 256 out, ignore_eos; medians over rounds)")
        cols = [
            ("out tok/s", "output_throughput", "{:.0f}"),
            ("TTFT p50", "median_ttft_ms", "{:.1f}"),
            ("TTFT p99", "p99_ttft_ms", "{:.0f}"),
            ("TPOT p50", "median_tpot_ms", "{:.2f}"),
            ("ITL p50", "median_itl_ms", "{:.2f}"),
            ("e2e p50", "median_e2el_ms", "{:.0f}"),
            ("e2e p99", "p99_e2el_ms", "{:.0f}"),
        ]
        keys = [k for k in order if f"{k}|{backend}" in results]
        head = (
            ["c"]
            + [f"{n} {'/'.join(keys)}" for n, _, _ in cols]
            + ["ours/raw tok/s", "ours/raw TTFT p50", "ours server TTFT mean"]
        )
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for c in levels:
            row = [str(c)]
            for _, field, fmt in cols:
                row.append(
                    " / ".join(
                        fmt.format(_med(results[f"{k}|{backend}"].get(str(c), []), field)) for k in keys
                    )
                )
            raw = results.get(f"raw|{backend}", {}).get(str(c), [])
            ours = results.get(f"ours|{backend}", {}).get(str(c), [])
            if raw and ours:
                row.append(f"{_med(ours, 'output_throughput') / _med(raw, 'output_throughput'):.2f}")
                row.append(f"{_med(ours, 'median_ttft_ms') / _med(raw, 'median_ttft_ms'):.2f}")
                row.append(f"{_med(ours, 'server_ttft_mean_ms'):.1f}")
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    sys.exit(main())
