#!/usr/bin/env bash
# Build the real Kubernetes control plane used by tests and the demo, from upstream
# source, through the Go module proxy (no Docker, no image registry needed):
#   kube-apiserver, kube-controller-manager, kube-scheduler  (k8s.io/kubernetes)
#   etcd                                                     (go.etcd.io/etcd/server/v3)
#   kwok                                                     (sigs.k8s.io/kwok)
# Binaries land in a cache outside the repo and are reused on later runs:
#   ${INFERA_CACHE_DIR:-$HOME/.cache/infera}/k8s/<versions>/bin
# Prints the bin directory on the last line of stdout. Idempotent.
set -euo pipefail

K8S_VERSION="${INFERA_K8S_VERSION:-v1.33.13}"
ETCD_VERSION="${INFERA_ETCD_VERSION:-v3.5.35}"
KWOK_VERSION="${INFERA_KWOK_VERSION:-v0.7.0}"

CACHE="${INFERA_CACHE_DIR:-$HOME/.cache/infera}"
OUTDIR="$CACHE/k8s/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
BIN="$OUTDIR/bin"
WORK="$OUTDIR/src"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok)

log() { echo "[build-cluster] $*" >&2; }
die() { echo "[build-cluster] ERROR: $*" >&2; exit 1; }

command -v go >/dev/null || die "Go is required (https://go.dev/dl); 'go' is not on PATH"

all_built() {
  for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
}
if all_built; then
  log "cached: $BIN (kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION)"
  echo "$BIN"; exit 0
fi

mkdir -p "$BIN" "$WORK"
export GOFLAGS="${GOFLAGS:-} -mod=mod" CGO_ENABLED=0 GOTOOLCHAIN=local
start=$(date +%s)

build_k8s() {
  local mod="$WORK/kubernetes" minor staging
  minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local staging_version="v0.${K8S_VERSION#v1.}"
  mkdir -p "$mod"
  log "resolving k8s.io/kubernetes $K8S_VERSION (staging modules at $staging_version)"
  # kubernetes' own go.mod replaces every staging module k8s.io/X with ./staging/src/k8s.io/X;
  # replace each with its published k8s.io/X v0.<minor>.<patch> instead.
  staging=$(curl -fsSL "https://proxy.golang.org/k8s.io/kubernetes/@v/${K8S_VERSION}.mod" \
            | sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p') \
    || die "cannot fetch the go.mod of k8s.io/kubernetes $K8S_VERSION from the Go module proxy"
  [[ -n "$staging" ]] || die "no staging modules found in k8s.io/kubernetes $K8S_VERSION go.mod"
  {
    echo "module infera.dev/build/kubernetes"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    for m in $staging; do echo "	$m => $m $staging_version"; done
    echo ")"
  } > "$mod/go.mod"
  cat > "$mod/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO
  (cd "$mod" && go mod tidy -e >&2 2>"$mod/tidy.log") || { tail -20 "$mod/tidy.log" >&2; die "go mod tidy failed for kubernetes"; }
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=${K8S_VERSION} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor} -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=${K8S_VERSION}"
  for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
    [[ -x "$BIN/$cmd" ]] && { log "$cmd already built"; continue; }
    log "building $cmd $K8S_VERSION (cold builds take several minutes on 2 cores)"
    local t0=$(date +%s)
    (cd "$mod" && go build -trimpath -ldflags "$ld" -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd") \
      || die "go build of $cmd failed (see output above)"
    mv "$BIN/$cmd.tmp" "$BIN/$cmd"
    log "built $cmd in $(( $(date +%s) - t0 ))s"
  done
}

build_simple() {  # name module-path version package
  local name=$1 module=$2 version=$3 pkg=$4 ld=${5:-"-s -w"} mod="$WORK/$1"
  [[ -x "$BIN/$name" ]] && { log "$name already built"; return; }
  mkdir -p "$mod"
  log "building $name $version"
  local t0=$(date +%s)
  if [[ ! -f "$mod/go.mod" ]]; then
    (cd "$mod" && go mod init "infera.dev/build/$name" >/dev/null 2>&1)
  fi
  (cd "$mod" && go get "$module@$version" >&2) || die "go get $module@$version failed"
  (cd "$mod" && go build -trimpath -ldflags "$ld" -o "$BIN/$name.tmp" "$pkg") || die "go build of $name failed"
  mv "$BIN/$name.tmp" "$BIN/$name"
  log "built $name in $(( $(date +%s) - t0 ))s"
}

build_simple etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/server/v3
build_simple kwok sigs.k8s.io/kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok \
  "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION}"
build_k8s

all_built || die "some binaries are missing in $BIN"
log "all binaries ready in $BIN ($(( $(date +%s) - start ))s)"
echo "$BIN"
