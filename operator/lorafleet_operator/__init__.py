"""lorafleet operator: CRD models, kopf handlers, Kubernetes object builders, CLI."""
