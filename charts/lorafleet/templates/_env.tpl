{{/*
Environment of the operator container: the chart's defaults mapped onto the operator's
settings (lorafleet_operator/settings.py names every variable). Secrets never pass through
here: install Jobs read tokens and keys from each BaseModel's secretRef via secretKeyRef.
*/}}
{{- define "lorafleet.operatorEnv" -}}
- name: POD_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: LORAFLEET_INSTALLER_IMAGE
  value: {{ include "lorafleet.imageRef" (list . .Values.installer.image) | quote }}
- name: LORAFLEET_SERVING_IMAGE
  value: {{ include "lorafleet.imageRef" (list . .Values.serving.image) | quote }}
- name: LORAFLEET_IMAGE_PULL_POLICY
  value: {{ .Values.image.pullPolicy | quote }}
{{- with .Values.imagePullSecrets }}
- name: LORAFLEET_IMAGE_PULL_SECRETS
  value: {{ join "," (pluck "name" .) | quote }}
{{- end }}
- name: LORAFLEET_RAY_VERSION
  value: {{ .Values.serving.rayVersion | quote }}
- name: LORAFLEET_GPU_RESOURCE
  value: {{ .Values.serving.gpuResourceName | quote }}
{{- if .Values.sharedVolume.existingClaim }}
- name: LORAFLEET_DEFAULT_CLAIM
  value: {{ .Values.sharedVolume.existingClaim | quote }}
{{- else }}
- name: LORAFLEET_DEFAULT_CLAIM
  value: {{ .Values.sharedVolume.claimName | quote }}
- name: LORAFLEET_DEFAULT_STORAGE_SIZE
  value: {{ .Values.sharedVolume.size | quote }}
{{- with .Values.sharedVolume.storageClass }}
- name: LORAFLEET_DEFAULT_STORAGE_CLASS
  value: {{ . | quote }}
{{- end }}
- name: LORAFLEET_DEFAULT_ACCESS_MODES
  value: {{ join "," .Values.sharedVolume.accessModes | quote }}
{{- end }}
- name: LORAFLEET_INSTALLER_RESOURCES
  value: {{ toJson .Values.installer.resources | quote }}
- name: LORAFLEET_JOB_BACKOFF_LIMIT
  value: {{ .Values.installer.job.backoffLimit | quote }}
- name: LORAFLEET_JOB_ACTIVE_DEADLINE_SECONDS
  value: {{ .Values.installer.job.activeDeadlineSeconds | quote }}
- name: LORAFLEET_JOB_TTL_SECONDS_AFTER_FINISHED
  value: {{ .Values.installer.job.ttlSecondsAfterFinished | quote }}
{{- with .Values.hfEndpoint }}
- name: LORAFLEET_HF_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end }}
