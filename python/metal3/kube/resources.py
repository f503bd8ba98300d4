"""The Kubernetes resources the operator reads and writes, and their REST paths."""

from __future__ import annotations

from dataclasses import dataclass

from metal3.api import constants


@dataclass(frozen=True)
class Resource:
    """One resource type as the REST API addresses it."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        """``/api/v1/namespaces/ns/secrets/x`` and the like; no namespace lists across all."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
            if subresource:
                base += f"/{subresource}"
        return base


BAREMETALHOSTS = Resource(
    constants.GROUP,
    constants.VERSION,
    constants.BAREMETALHOST_PLURAL,
    constants.BAREMETALHOST_KIND,
)
HARDWAREDATA = Resource(
    constants.GROUP,
    constants.VERSION,
    constants.HARDWAREDATA_PLURAL,
    constants.HARDWAREDATA_KIND,
)
SECRETS = Resource("", "v1", "secrets", "Secret")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
EVENTS = Resource("", "v1", "events", "Event")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
HOSTCLAIMS = Resource(
    constants.GROUP, constants.VERSION, constants.HOSTCLAIM_PLURAL, constants.HOSTCLAIM_KIND
)
HOSTDEPLOYPOLICIES = Resource(
    constants.GROUP,
    constants.VERSION,
    constants.HOSTDEPLOYPOLICY_PLURAL,
    constants.HOSTDEPLOYPOLICY_KIND,
)
METAL3MACHINES = Resource(
    constants.INFRASTRUCTURE_GROUP,
    constants.INFRASTRUCTURE_VERSION,
    constants.METAL3MACHINE_PLURAL,
    constants.METAL3MACHINE_KIND,
)
MACHINES = Resource(
    constants.CLUSTER_API_GROUP,
    constants.CLUSTER_API_VERSION,
    constants.MACHINE_PLURAL,
    constants.MACHINE_KIND,
)
