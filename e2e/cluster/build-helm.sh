#!/usr/bin/env bash
# Build the Helm CLI used to lint, render and install charts/infera in tests, from upstream
# source through the Go module proxy (no binary download, no Docker), once, into the cache:
#   ${INFERA_CACHE_DIR:-$HOME/.cache/infera}/helm/<version>/bin/helm
# Prints the path of the helm binary on the last line of stdout. Idempotent: a cached binary
# is reused. INFERA_HELM_VERSION picks another release (default below: the newest v3 release
# whose go.mod builds with Go 1.24, the minimum the README asks for).
set -euo pipefail

HELM_VERSION="${INFERA_HELM_VERSION:-v3.19.5}"
CACHE="${INFERA_CACHE_DIR:-$HOME/.cache/infera}"
# RECIPE changes when the way we build changes (e.g. ldflags), so an older cached build is not reused.
RECIPE=2
OUTDIR="$CACHE/helm/${HELM_VERSION}-r${RECIPE}"
BIN="$OUTDIR/bin"
WORK="$OUTDIR/src"

log() { echo "[build-helm] $*" >&2; }
die() { echo "[build-helm] ERROR: $*" >&2; exit 1; }

if [[ -x "$BIN/helm" ]] && "$BIN/helm" version --short >/dev/null 2>&1; then
  log "cached: $BIN/helm ($HELM_VERSION)"
  echo "$BIN/helm"; exit 0
fi

command -v go >/dev/null || die "Go is required (https://go.dev/dl); 'go' is not on PATH"
[[ "$HELM_VERSION" =~ ^v3\.[0-9]+\.[0-9]+$ ]] || die "INFERA_HELM_VERSION must look like v3.X.Y (got '$HELM_VERSION')"

mkdir -p "$BIN" "$WORK"
export GOFLAGS="${GOFLAGS:-} -mod=mod" CGO_ENABLED=0 GOTOOLCHAIN=local
t0=$(date +%s)
log "building helm $HELM_VERSION with $(go version | cut -d' ' -f3) (a cold build takes a few minutes on 2 cores)"
if [[ ! -f "$WORK/go.mod" ]]; then
  (cd "$WORK" && go mod init infera.dev/build/helm >/dev/null 2>&1) || die "go mod init failed in $WORK"
fi
(cd "$WORK" && go get "helm.sh/helm/v3@$HELM_VERSION" >&2) \
  || die "go get helm.sh/helm/v3@$HELM_VERSION failed (is the Go module proxy reachable? is Go new enough for its go.mod?)"
# Stamp what helm's Makefile stamps: its version, and the Kubernetes version of its client-go
# module, which `helm template` and `helm lint` assume when no cluster is asked (else v1.20).
k8s_mod=$(cd "$WORK" && go list -m -f '{{.Version}}' k8s.io/client-go) || die "cannot resolve k8s.io/client-go for helm $HELM_VERSION"
[[ "$k8s_mod" =~ ^v0\.([0-9]+)\. ]] || die "unexpected k8s.io/client-go version '$k8s_mod'"
k8s_minor="${BASH_REMATCH[1]}"
ld="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ld+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
(cd "$WORK" && go build -trimpath -ldflags "$ld" -o "$BIN/helm.tmp" helm.sh/helm/v3/cmd/helm) \
  || die "go build of helm $HELM_VERSION failed (see output above)"
mv "$BIN/helm.tmp" "$BIN/helm"
"$BIN/helm" version --short >/dev/null || die "the built helm does not run: $BIN/helm"
log "built $("$BIN/helm" version --short) (default Kubernetes version v1.$k8s_minor) in $(( $(date +%s) - t0 ))s"
echo "$BIN/helm"
