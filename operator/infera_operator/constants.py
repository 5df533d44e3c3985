"""Names shared by the operator, the CRD, the chart and the tests (see .work/CONTRACT.md)."""

from __future__ import annotations

GROUP = "infera.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceService"
PLURAL = "inferenceservices"
SHORT_NAME = "infsvc"

FIELD_MANAGER = "infera-operator"
# Used once, when autoscaling is switched on, to keep the Deployment's replicas while the
# operator stops applying them (see reconcile.hand_over_replicas).
HANDOVER_FIELD_MANAGER = "infera-operator-handover"

# Labels on every child and on the pods.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_ISVC = "infera.dev/inferenceservice"
RUNTIME_APP_NAME = "infera-runtime"
MANAGED_BY = "infera-operator"

# Annotations the operator writes on children.
ANNOTATION_CONFIG_HASH = "infera.dev/config-hash"  # on the pod template: a config change rolls pods
ANNOTATION_DESIRED_HASH = "infera.dev/desired-hash"  # on each child: what the operator last applied

# The runtime container (CONTRACT.md, Runtime).
RUNTIME_PORT = 8000
SERVICE_PORT = 80
PORT_NAME = "http"
CONFIG_KEY = "runtime.json"
CONFIG_DIR = "/etc/infera"
CONFIG_FILE = f"{CONFIG_DIR}/{CONFIG_KEY}"
API_KEY_DIR = "/var/run/secrets/infera/api-keys"
MODELS_DIR = "/models"
CACHE_DIR = "/var/cache/infera"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

METRIC_IN_FLIGHT = "infera_requests_in_flight"
METRIC_QUEUED = "infera_requests_queued"

DEFAULT_RUNTIME_IMAGE = "ghcr.io/infera-dev/infera-runtime:0.1.0"

# Condition types.
READY = "Ready"
CONFIG_READY = "ConfigReady"
SCHEDULED = "Scheduled"
DEPLOYMENT_AVAILABLE = "DeploymentAvailable"
AUTOSCALER_READY = "AutoscalerReady"
CONDITION_TYPES = (READY, CONFIG_READY, SCHEDULED, DEPLOYMENT_AVAILABLE, AUTOSCALER_READY)
