{{/*
Names. The chart's objects are named after the release, so two releases never
collide, cluster-scoped objects (ClusterRole, ClusterRoleBinding) and the Role
in `default` included:
  tenantgate.name      nameOverride, else "tenantgate"; with "-operator" it is
                       the app.kubernetes.io/name label (tenantgate-operator)
  tenantgate.fullname  fullnameOverride, else the release name when it contains
                       the name, else <release>-<name>; then "-operator"
                       (release "tenantgate": tenantgate-operator)
*/}}
{{- define "tenantgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 54 | trimSuffix "-" -}}-operator
{{- end -}}

{{- define "tenantgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- $base := ternary .Release.Name (printf "%s-%s" .Release.Name $name) (contains $name .Release.Name) -}}
{{- $base | trunc 54 | trimSuffix "-" -}}-operator
{{- end -}}
{{- end -}}

{{- define "tenantgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tenantgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tenantgate.labels" -}}
app.kubernetes.io/name: {{ include "tenantgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tenantgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "tenantgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tenantgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* repository:tag, or repository@digest when a digest is set (the digest wins). */}}
{{- define "tenantgate.imageRef" -}}
{{- $image := index . 0 -}}{{- $appVersion := index . 1 -}}
{{- if $image.digest -}}
{{ $image.repository }}@{{ $image.digest }}
{{- else -}}
{{ $image.repository }}:{{ $image.tag | default $appVersion }}
{{- end -}}
{{- end -}}

{{- define "tenantgate.image" -}}
{{ include "tenantgate.imageRef" (list .Values.image .Chart.AppVersion) }}
{{- end -}}

{{- define "tenantgate.gatewayImage" -}}
{{ include "tenantgate.imageRef" (list .Values.gatewayImage .Chart.AppVersion) }}
{{- end -}}

{{/* key=value,... of a map, for the operator's label flags. */}}
{{- define "tenantgate.labelPairs" -}}
{{- $pairs := list -}}
{{- range $k, $v := . -}}{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
