"""Tests of the Helm chart, the plain manifests, the RBAC and the container image."""
