#!/usr/bin/env bash
# The local demo (README): control plane + operator + a sample InferenceService serving a tiny
# model on CPU. Prepares everything on first use (cached), then runs until Ctrl-C.
# Options: --once (exit after a few table refreshes), --replicas N.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash e2e/env/setup.sh
export PYTHONPATH="$ROOT/operator:$ROOT/runtime:$ROOT/e2e" PYTHONUNBUFFERED=1
exec "$ROOT/.venv/bin/python" -m infera_testenv.demo "$@"
