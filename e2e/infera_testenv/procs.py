"""Helpers for the processes the test environment starts."""

from __future__ import annotations

import os

SERVER_NICE = 10


def below_tests() -> None:
    """``preexec_fn`` for a server the tests drive (a vLLM runtime): run it below their priority.

    On a 2-core machine vLLM's worker keeps one core busy and the engine loop most of the other,
    so the process driving it (the test that must hang up, poll readiness, send SIGTERM; the
    control plane; the operator) could be starved for seconds. The child starts its own session
    (``start_new_session=True``), hence its own scheduler autogroup: lower that group's weight as
    well as the process's own. Runs in the child between fork and exec.
    """
    os.nice(SERVER_NICE)
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(SERVER_NICE))
    except OSError:
        pass  # no autogroup on this kernel: the nice value alone applies
