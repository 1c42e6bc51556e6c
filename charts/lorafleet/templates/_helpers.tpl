{{/*
Chart name, truncated to 63 characters (a DNS label).
*/}}
{{- define "lorafleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart> unless the release name already contains the chart name.
*/}}
{{- define "lorafleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lorafleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object (Kubernetes recommended labels).
*/}}
{{- define "lorafleet.labels" -}}
helm.sh/chart: {{ include "lorafleet.chart" . }}
{{ include "lorafleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lorafleet
{{- end }}

{{- define "lorafleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lorafleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "lorafleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lorafleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference "repository:tag" for an {repository, tag} dict, falling back to the main
image (and its tag to the chart's appVersion). Call with (list $ .Values.installer.image).
*/}}
{{- define "lorafleet.imageRef" -}}
{{- $root := index . 0 }}
{{- $img := index . 1 }}
{{- $repo := $img.repository | default $root.Values.image.repository }}
{{- $tag := $img.tag | default $root.Values.image.tag | default $root.Chart.AppVersion }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/*
True ("true") when the operator watches every namespace.
*/}}
{{- define "lorafleet.clusterWide" -}}
{{- if not .Values.watchNamespaces }}true{{ end }}
{{- end }}
