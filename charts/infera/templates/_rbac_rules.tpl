{{/*
The operator's permissions in a watched namespace (or cluster-wide when it watches all of them).
Each rule names what the operator does with it; nothing else is granted (no Secrets at all).
*/}}
{{- define "infera.rbacRules" -}}
# Watch InferenceServices. The operator never writes them (no finalizer, kopf state kept in memory).
- apiGroups: ["infera.dev"]
  resources: ["inferenceservices"]
  verbs: ["get", "list", "watch"]
# Status: conditions, replicas, url, throughput.
- apiGroups: ["infera.dev"]
  resources: ["inferenceservices/status"]
  verbs: ["get", "patch"]
# Children: ConfigMap NAME-config, Service NAME, Deployment NAME, HPA NAME (server-side apply is a
# PATCH, and needs create for a child that does not exist yet; delete: the HPA when autoscaling is off).
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Runtime pods: readiness, scheduling and container failure reasons, pod IPs for metrics.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Kubernetes events about InferenceServices (kopf posts core/v1 Events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}


{{/*
What kopf itself needs at the cluster scope, whatever the watched namespaces: it watches
CustomResourceDefinitions to notice when the InferenceService CRD is installed, changed or removed,
and, when it watches only some namespaces, it watches the Namespace objects to notice when those
appear or go. Read-only, metadata-level objects; without them kopf retries for ~20 s at start-up and
then stops noticing such changes until it is restarted.
*/}}
{{- define "infera.rbacDiscoveryRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .namespaced }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end -}}
