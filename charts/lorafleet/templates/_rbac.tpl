{{/*
The namespaced rules: exactly the verbs on exactly the resources the operator calls in a
namespace it watches (tests/chart/test_rbac_rules.py derives them from the operator's code
and compares). Used by the ClusterRole (cluster-wide mode) and by each Role (namespaced
mode). No Secrets: install Jobs reference them through secretKeyRef, which the kubelet
resolves with its own identity.
*/}}
{{- define "lorafleet.namespacedRules" -}}
# The operator's own resources: kopf lists and watches them and patches finalizers and its
# progress annotations; the operator patches their status.
- apiGroups: ["lorafleet.io"]
  resources: ["basemodels", "loraadapters"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["lorafleet.io"]
  resources: ["basemodels/status", "loraadapters/status"]
  verbs: ["patch"]
# Jobs, PVCs and RayServices carry ownerReferences with blockOwnerDeletion, which clusters
# enforcing OwnerReferencesPermissionEnforcement allow only with this.
- apiGroups: ["lorafleet.io"]
  resources: ["basemodels/finalizers", "loraadapters/finalizers"]
  verbs: ["update"]
# Install and cleanup Jobs.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# An install Pod's termination message holds the install report.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# A running install Pod's log tail holds its progress line (status.progress).
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# The shared volume: checked, or made from spec.storage.size.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "create"]
# One RayService per BaseModel; adapters change its serveConfigV2 in place.
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# One NetworkPolicy per BaseModel closes its Ray Pods to the namespace (networkPolicy.enabled);
# patch brings a policy an older operator made up to date.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "patch"]
# Events on every phase change (kopf posts core/v1 Events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
Cluster-scoped rules every mode needs: kopf lists and watches CustomResourceDefinitions to find
the resources it serves (and notices when they appear or change).
*/}}
{{- define "lorafleet.crdRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}
