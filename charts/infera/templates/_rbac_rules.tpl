{{/*
The operator's permissions in a watched namespace (or cluster-wide when it watches all of them).
Each rule names what the operator does with it; nothing else is granted (no Secrets at all).
*/}}
{{- define "infera.rbacRules" -}}
# Watch InferenceServices; kopf patches them for its finalizer and its progress annotations.
- apiGroups: ["infera.dev"]
  resources: ["inferenceservices"]
  verbs: ["get", "list", "watch", "patch"]
# Status: conditions, replicas, url, throughput.
- apiGroups: ["infera.dev"]
  resources: ["inferenceservices/status"]
  verbs: ["get", "patch", "update"]
# Children: ConfigMap NAME-config, Service NAME, Deployment NAME, HPA NAME.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Runtime pods: readiness, scheduling and container failure reasons, pod IPs for metrics.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Kubernetes events about InferenceServices (kopf posts core/v1 Events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
