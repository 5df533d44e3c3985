#!/usr/bin/env bash
# Copy the CRDs (crds/*.yaml, the single source) into the Helm chart (charts/infera/crds/), byte for
# byte, removing copies whose source is gone. With --check, change nothing and exit 1 if they differ
# (tests/unit/packaging/test_chart.py asserts the same).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/crds"
DST="$ROOT/charts/infera/crds"
check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
shopt -s nullglob
sources=("$SRC"/*.yaml)
(( ${#sources[@]} )) || { echo "[sync-crds] ERROR: no CRDs in $SRC" >&2; exit 1; }
mkdir -p "$DST"
drift=0
for f in "${sources[@]}"; do
  dst="$DST/$(basename "$f")"
  if ! cmp -s "$f" "$dst"; then
    drift=1
    if (( check )); then echo "[sync-crds] out of date: ${dst#"$ROOT"/}" >&2; else cp "$f" "$dst"; echo "[sync-crds] copied ${f#"$ROOT"/}" >&2; fi
  fi
done
for dst in "$DST"/*.yaml; do
  if [[ ! -f "$SRC/$(basename "$dst")" ]]; then
    drift=1
    if (( check )); then echo "[sync-crds] stale: ${dst#"$ROOT"/}" >&2; else rm "$dst"; echo "[sync-crds] removed ${dst#"$ROOT"/}" >&2; fi
  fi
done
if (( check && drift )); then echo "[sync-crds] run charts/sync-crds.sh" >&2; exit 1; fi
exit 0
