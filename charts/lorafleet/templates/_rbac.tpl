{{/*
The namespaced rules: exactly the verbs on exactly the resources the operator calls in a
namespace it watches. Used by the ClusterRole (cluster-wide mode) and by each Role
(namespaced mode). No Secrets: install Jobs reference them through secretKeyRef, which the
kubelet resolves with its own identity.
*/}}
{{- define "lorafleet.namespacedRules" -}}
# The operator's own resources: kopf watches them and patches finalizers and annotations.
- apiGroups: ["lorafleet.io"]
  resources: ["basemodels", "loraadapters"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["lorafleet.io"]
  resources: ["basemodels/status", "loraadapters/status"]
  verbs: ["get", "patch", "update"]
# Setting blockOwnerDeletion in ownerReferences of Jobs/RayServices/PVCs needs this.
- apiGroups: ["lorafleet.io"]
  resources: ["basemodels/finalizers", "loraadapters/finalizers"]
  verbs: ["update"]
# Install and cleanup Jobs.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Reading an install Pod's termination message (the install report) and its log.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# The shared volume: checked, and made from size + storage class when missing.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create"]
# One RayService per BaseModel; adapters change its serveConfigV2 in place.
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Events on every phase change (kopf posts core/v1 Events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Cluster-scoped rules every mode needs: kopf scans CustomResourceDefinitions to find the
resources it serves (and notices when they appear or change).
*/}}
{{- define "lorafleet.crdRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}
