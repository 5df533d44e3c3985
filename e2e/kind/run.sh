#!/usr/bin/env bash
# End-to-end check of infera on a real (kind) cluster, for anyone with Docker. Not run in the
# project's CI (that machine has no Docker); the CI covers the same path on a local control plane
# (tests/integration/packaging/test_chart_install.py, e2e/).
#
#   1. kind create cluster
#   2. docker build the operator image (operator/Dockerfile) and the CPU runtime image
#      (runtime/Dockerfile.cpu), then kind load them into the cluster's nodes (no registry needed)
#   3. helm install charts/infera (CRD, operator, RBAC), wait for the operator to roll out
#   4. kubectl apply e2e/examples/tiny-cpu-synthetic.yaml (synthetic engine: no GPU, no model)
#   5. kubectl wait for the InferenceService's Ready condition
#   6. kubectl port-forward its Service and call /v1/models and /v1/chat/completions with curl
#   7. tear down: kind delete cluster (unless --keep)
#
# Needs: docker, kind (>= 0.20), kubectl, helm (>= 3.8), curl. Run from anywhere:
#   e2e/kind/run.sh            # everything, then delete the cluster
#   e2e/kind/run.sh --keep     # leave the cluster running to look around (kind delete cluster --name infera-e2e)
#   e2e/kind/run.sh --no-build # reuse images already built with the same tags
# Environment: KIND_CLUSTER (infera-e2e), KIND_NODE_IMAGE (kind's default), TAG (the chart's appVersion),
#   NAMESPACE (infera-demo), LOCAL_PORT (18080), WAIT_TIMEOUT (600s; the first runtime start is slow).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CHART="$ROOT/charts/infera"
EXAMPLE="$ROOT/e2e/examples/tiny-cpu-synthetic.yaml"
OPERATOR_DOCKERFILE="$ROOT/operator/Dockerfile"
RUNTIME_DOCKERFILE="$ROOT/runtime/Dockerfile.cpu"

KIND_CLUSTER="${KIND_CLUSTER:-infera-e2e}"
NAMESPACE="${NAMESPACE:-infera-demo}"
RELEASE_NAMESPACE="infera-system"
LOCAL_PORT="${LOCAL_PORT:-18080}"
WAIT_TIMEOUT="${WAIT_TIMEOUT:-600s}"
TAG="${TAG:-$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"[:space:]]*\)"\{0,1\}[[:space:]]*$/\1/p' "$CHART/Chart.yaml")}"
# The chart's default operator image and the runtime image the example names: building them under
# these names means neither the chart nor the example needs changing (IfNotPresent uses the loaded copy).
OPERATOR_IMAGE="ghcr.io/infera-dev/infera-operator:$TAG"
RUNTIME_IMAGE="ghcr.io/infera-dev/infera-runtime:$TAG-cpu"
ISVC="tiny"

keep=0
build=1
for arg in "$@"; do
  case "$arg" in
    --keep) keep=1 ;;
    --no-build) build=0 ;;
    -h | --help) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--keep] [--no-build]" >&2; exit 2 ;;
  esac
done

log() { printf '[kind-e2e] %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

for tool in docker kind kubectl helm curl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not on PATH"
done
[[ -n "$TAG" ]] || die "could not read appVersion from $CHART/Chart.yaml"
grep -q "image: $RUNTIME_IMAGE\$" "$EXAMPLE" || die "$EXAMPLE does not use $RUNTIME_IMAGE"

CTX="kind-$KIND_CLUSTER"
k() { kubectl --context "$CTX" "$@"; }
pf_pid=""

diagnose() {
  log "diagnostics:"
  k get inferenceservices,deployments,pods,services -A -o wide >&2 || true
  k describe inferenceservice "$ISVC" -n "$NAMESPACE" >&2 || true
  k logs -n "$RELEASE_NAMESPACE" deployment/infera-operator --tail=100 >&2 || true
  k logs -n "$NAMESPACE" -l "infera.dev/inferenceservice=$ISVC" --tail=100 >&2 || true
}

teardown() {
  local rc=$?
  [[ -z "$pf_pid" ]] || kill "$pf_pid" 2>/dev/null || true
  if (( rc != 0 )); then diagnose; fi
  if (( keep )); then
    log "kept cluster $KIND_CLUSTER (kubectl --context $CTX ...; delete: kind delete cluster --name $KIND_CLUSTER)"
  else
    log "deleting cluster $KIND_CLUSTER"
    kind delete cluster --name "$KIND_CLUSTER" || true
  fi
  exit "$rc"
}

# 1. cluster
if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
  die "a kind cluster named $KIND_CLUSTER exists already (delete it, or set KIND_CLUSTER)"
fi
log "creating kind cluster $KIND_CLUSTER"
trap teardown EXIT
kind create cluster --name "$KIND_CLUSTER" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 120s

# 2. images
if (( build )); then
  log "building $OPERATOR_IMAGE and $RUNTIME_IMAGE"
  docker build -f "$OPERATOR_DOCKERFILE" -t "$OPERATOR_IMAGE" "$ROOT"
  docker build -f "$RUNTIME_DOCKERFILE" -t "$RUNTIME_IMAGE" "$ROOT"
fi
log "loading the images into the cluster"
kind load docker-image --name "$KIND_CLUSTER" "$OPERATOR_IMAGE" "$RUNTIME_IMAGE"

# 3. operator
log "installing the chart"
helm --kube-context "$CTX" install infera "$CHART" --namespace "$RELEASE_NAMESPACE" --create-namespace \
  --set image.tag="$TAG" --set image.pullPolicy=IfNotPresent --wait --timeout 5m
k -n "$RELEASE_NAMESPACE" rollout status deployment/infera-operator --timeout=180s
k wait --for=condition=Established --timeout=60s crd/inferenceservices.infera.dev

# 4.-5. a model
log "applying $(basename "$EXAMPLE") in namespace $NAMESPACE"
k create namespace "$NAMESPACE"
k apply -n "$NAMESPACE" -f "$EXAMPLE"
log "waiting up to $WAIT_TIMEOUT for inferenceservice/$ISVC to be Ready"
k wait -n "$NAMESPACE" --for=condition=Ready --timeout="$WAIT_TIMEOUT" "inferenceservice/$ISVC"
k get inferenceservice "$ISVC" -n "$NAMESPACE" -o wide

# 6. a request through the Service
log "port-forwarding service/$ISVC to 127.0.0.1:$LOCAL_PORT"
k port-forward -n "$NAMESPACE" "service/$ISVC" "$LOCAL_PORT:80" >/dev/null 2>&1 &
pf_pid=$!
base="http://127.0.0.1:$LOCAL_PORT"
for _ in $(seq 1 30); do
  if curl -fsS -o /dev/null "$base/health/ready"; then break; fi
  sleep 1
done
models="$(curl -fsS "$base/v1/models")"
log "GET /v1/models: $models"
grep -q "\"id\": *\"$ISVC\"" <<<"$models" || die "/v1/models does not list $ISVC"
reply="$(curl -fsS "$base/v1/chat/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"$ISVC\", \"messages\": [{\"role\": \"user\", \"content\": \"Say hello\"}], \"max_tokens\": 8}")"
log "POST /v1/chat/completions: $reply"
grep -q '"chat.completion"' <<<"$reply" || die "no chat completion in the reply"
log "PASSED: infera served a chat completion on kind"
