"""Helpers for the processes the test environment starts."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import IO

SERVER_NICE = 10


def below_tests(pid: int) -> None:
    """Run server ``pid`` (a vLLM runtime the tests or a benchmark drive) below their priority.

    On a 2-core machine vLLM's worker keeps one core busy and the engine loop most of the other,
    so the process driving it (the test that must hang up, poll readiness, send SIGTERM; the
    control plane; the operator; a load generator) could be starved for seconds. The server is
    started in its own session (``start_new_session=True``), hence its own scheduler autogroup:
    lower that group's weight, which covers every process of the session (vLLM's engine and
    worker too), as well as the process's own nice value, which the children it forks inherit.

    Called by the parent right after ``Popen`` (not as ``preexec_fn``, which is unsafe in a
    process with threads, such as the pod simulator); vLLM forks its engine seconds later.
    Only for a process in a session of its own (``start_server``): otherwise the autogroup written
    would be the caller's.
    """
    with contextlib.suppress(ProcessLookupError):
        os.setpriority(os.PRIO_PROCESS, pid, SERVER_NICE)
    # No autogroup on this kernel, or the process is already gone: the nice value alone applies.
    with contextlib.suppress(OSError), open(f"/proc/{pid}/autogroup", "w") as f:
        f.write(str(SERVER_NICE))


def start_server(
    argv: list[str], *, env: Mapping[str, str], log: IO[bytes], cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a server the tests or a benchmark drive: output to ``log``, no stdin, in a session of
    its own (a signal to its process group reaches vLLM's engine and workers too), below the
    priority of whoever drives it (``below_tests``)."""
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        start_new_session=True,
    )
    below_tests(proc.pid)
    return proc
