{{/*
Environment of the operator container: the chart's values mapped onto the operator's
settings (lorafleet_operator/settings.py, the ENV_* names). Secrets never pass through here:
install Jobs read tokens and keys from each BaseModel's secretRef via secretKeyRef.
*/}}
{{- define "lorafleet.operatorEnv" -}}
# kopf peering identity: the Pod's name.
- name: POD_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- with .Values.watchNamespaces }}
- name: LORAFLEET_NAMESPACES
  value: {{ join "," . | quote }}
{{- end }}
- name: LORAFLEET_PEERING
  value: {{ .Values.peering.name | quote }}
- name: LORAFLEET_HEALTH_PORT
  value: {{ .Values.operator.livenessPort | quote }}
- name: LORAFLEET_METRICS_PORT
  value: {{ .Values.metrics.port | quote }}
- name: LORAFLEET_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: LORAFLEET_INSTALLER_IMAGE
  value: {{ include "lorafleet.imageRef" (list . .Values.installer.image) | quote }}
- name: LORAFLEET_SERVING_IMAGE
  value: {{ include "lorafleet.imageRef" (list . .Values.serving.image) | quote }}
- name: LORAFLEET_IMAGE_PULL_POLICY
  value: {{ .Values.image.pullPolicy | quote }}
- name: LORAFLEET_RAY_VERSION
  value: {{ .Values.serving.rayVersion | quote }}
- name: LORAFLEET_READY_TIMEOUT_S
  value: {{ .Values.serving.readyTimeoutSeconds | quote }}
- name: LORAFLEET_DEFAULT_CLAIM
  value: {{ .Values.sharedVolume.existingClaim | default .Values.sharedVolume.claimName | quote }}
- name: LORAFLEET_RUN_AS_USER
  value: {{ .Values.runAsUser | quote }}
- name: LORAFLEET_JOB_BACKOFF_LIMIT
  value: {{ .Values.installer.job.backoffLimit | quote }}
- name: LORAFLEET_JOB_DEADLINE_S
  value: {{ .Values.installer.job.activeDeadlineSeconds | quote }}
- name: LORAFLEET_JOB_TTL_S
  value: {{ .Values.installer.job.ttlSecondsAfterFinished | quote }}
- name: LORAFLEET_POLL_INTERVAL_S
  value: {{ .Values.operator.pollIntervalSeconds | quote }}
- name: LORAFLEET_DEBOUNCE_S
  value: {{ .Values.operator.debounceSeconds | quote }}
- name: LORAFLEET_REGISTRY_WRITE_INTERVAL_S
  value: {{ .Values.operator.registryWriteIntervalSeconds | quote }}
- name: LORAFLEET_LISTEN_HOST
  value: {{ .Values.operator.listenHost | quote }}
- name: LORAFLEET_GPU_RESOURCE_NAME
  value: {{ .Values.gpuResourceName | quote }}
- name: LORAFLEET_NETWORK_POLICY
  value: {{ .Values.networkPolicy.enabled | quote }}
- name: LORAFLEET_KUBERAY_NAMESPACE
  value: {{ .Values.kuberay.namespace | quote }}
{{- with .Values.monitoring.podMonitor.scraperNamespace }}
- name: LORAFLEET_METRICS_SCRAPER_NAMESPACE
  value: {{ . | quote }}
{{- end }}
- name: LORAFLEET_SERVING_PROBE
  value: {{ .Values.operator.servingProbe | quote }}
{{- with .Values.installer.resources }}
- name: LORAFLEET_INSTALLER_RESOURCES
  value: {{ toJson . | quote }}
{{- end }}
{{- with .Values.imagePullSecrets }}
{{- $names := list }}
{{- range . }}
{{- $names = append $names .name }}
{{- end }}
- name: LORAFLEET_IMAGE_PULL_SECRETS
  value: {{ join "," $names | quote }}
{{- end }}
{{- with .Values.hfEndpoint }}
- name: LORAFLEET_HF_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.awsEndpointUrl }}
- name: LORAFLEET_AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- end }}
