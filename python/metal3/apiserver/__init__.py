"""Embedded Kubernetes-compatible API server (`metal3 apiserver`).

A single process that speaks the Kubernetes REST API for the resources the operator needs
(CustomResourceDefinitions and the custom resources they define, core Secrets, ConfigMaps,
Namespaces and Events, events.k8s.io Events, coordination.k8s.io Leases), stored in SQLite.
"""

from __future__ import annotations
