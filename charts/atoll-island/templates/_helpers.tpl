{{- define "atoll-island.name" -}}
{{- default .Release.Name .Values.serviceAccountName | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "atoll-island.labels" -}}
app.kubernetes.io/name: atoll-island
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
