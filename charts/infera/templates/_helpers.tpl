{{/* Chart name, truncated to 63 characters (DNS label). */}}
{{- define "infera.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified release name: the release name, or "<release>-infera" if it does not contain the chart name. */}}
{{- define "infera.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "infera.operatorName" -}}
{{- printf "%s-operator" (include "infera.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "infera.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object of this chart. */}}
{{- define "infera.labels" -}}
helm.sh/chart: {{ include "infera.chart" . }}
{{ include "infera.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: infera
{{- end -}}

{{/* Selector labels of the operator Deployment. */}}
{{- define "infera.selectorLabels" -}}
app.kubernetes.io/name: infera-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "infera.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "infera.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator image reference: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "infera.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Watched namespaces, de-duplicated and sorted; empty means all namespaces. */}}
{{- define "infera.watchNamespaces" -}}
{{- .Values.operator.watchNamespaces | uniq | sortAlpha | toJson -}}
{{- end -}}

{{/* The labels the operator puts on runtime pods (CONTRACT: app.kubernetes.io/name=infera-runtime, managed-by=infera-operator). */}}
{{- define "infera.runtimePodSelector" -}}
app.kubernetes.io/name: infera-runtime
app.kubernetes.io/managed-by: infera-operator
{{- end -}}
