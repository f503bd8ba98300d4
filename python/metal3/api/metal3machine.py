"""The Metal3Machine resource (infrastructure.cluster.x-k8s.io/v1beta1): Cluster API's request
for one bare-metal machine, in the field names of Cluster API provider Metal3 (CAPM3), so
manifests written for CAPM3 apply unchanged.

Fields this project accepts but does not act on (they are kept, never an error):
``spec.dataTemplate`` (CAPM3's Metal3DataTemplate rendering) and ``status.renderedData``,
``status.phase``.
"""

from __future__ import annotations

from dataclasses import dataclass

from metal3.api.baremetalhost import CustomDeploy
from metal3.api.constants import (
    INFRASTRUCTURE_API_VERSION,
    METAL3MACHINE_KIND,
    AutomatedCleaningMode,
    ImageFormat,
    MachineAddressType,
    MachineStatusError,
)
from metal3.api.meta import ObjectMeta, ObjectReference, SecretReference
from metal3.api.model import Model, prop


@dataclass(kw_only=True)
class HostSelectorRequirement(Model):
    """One label requirement, with CAPM3's (Kubernetes `selection.Operator`) operators."""

    key: str | None = prop("key", "The label key.", required=True)
    operator: str | None = prop(
        "operator",
        "in, notin, exists, ! (does not exist), =, == or != (In, NotIn, Exists and "
        "DoesNotExist are accepted too).",
        required=True,
    )
    values: list[str] | None = prop("values", "The values; empty for exists and !.", required=True)


@dataclass(kw_only=True)
class HostSelector(Model):
    """Which BareMetalHosts may be claimed: all of the labels and expressions must match."""

    match_labels: dict[str, str] | None = prop(
        "matchLabels", "Labels that must be present on a chosen BareMetalHost, with these values."
    )
    match_expressions: list[HostSelectorRequirement] | None = prop(
        "matchExpressions", "Label expressions that must hold on a chosen BareMetalHost."
    )
    namespace: str | None = prop(
        "namespace",
        "Where to look for BareMetalHosts; only the Metal3Machine's own namespace is supported.",
    )


@dataclass(kw_only=True)
class Image(Model):
    url: str | None = prop("url", "Location of the image to deploy.", required=True)
    checksum: str | None = prop(
        "checksum", "Checksum of the image, or URL of a checksum file.", required=True
    )
    checksum_type: str | None = prop(
        "checksumType", "Checksum algorithm of the image.", enum=("md5", "sha256", "sha512")
    )
    format: str | None = prop("format", "Disk format of the image.", enum=ImageFormat)


@dataclass(kw_only=True)
class Metal3MachineSpec(Model):
    provider_id: str | None = prop(
        "providerID", "Set by the controller: metal3://NAMESPACE/HOST/NAME."
    )
    image: Image | None = prop("image", "The image to provision.")
    custom_deploy: CustomDeploy | None = prop(
        "customDeploy", "A custom deploy procedure instead of an image."
    )
    user_data: SecretReference | None = prop(
        "userData",
        "Secret with user data, used when no Cluster API Machine gives bootstrap data.",
    )
    host_selector: HostSelector | None = prop(
        "hostSelector", "Label criteria a BareMetalHost must meet to be claimed."
    )
    data_template: ObjectReference | None = prop(
        "dataTemplate", "CAPM3's Metal3DataTemplate; accepted but not used here."
    )
    meta_data: SecretReference | None = prop(
        "metaData", "Secret with metadata for the config drive."
    )
    network_data: SecretReference | None = prop(
        "networkData", "Secret with network data for the config drive."
    )
    automated_cleaning_mode: str | None = prop(
        "automatedCleaningMode",
        "Whether the host's disks are cleaned before provisioning and after deprovisioning.",
        enum=AutomatedCleaningMode,
    )
    failure_domain: str | None = prop(
        "failureDomain",
        "Preferred failure domain (host label infrastructure.cluster.x-k8s.io/failure-domain).",
    )


@dataclass(kw_only=True)
class MachineAddress(Model):
    type: str | None = prop("type", "Kind of address.", required=True, enum=MachineAddressType)
    address: str | None = prop("address", "The address.", required=True)


@dataclass(kw_only=True)
class ClusterCondition(Model):
    """Cluster API v1beta1 `Condition` (with `severity`, unlike `metav1.Condition`)."""

    type: str | None = prop("type", "Type of condition in CamelCase.", required=True)
    status: str | None = prop(
        "status", "Status of the condition: True, False or Unknown.", required=True
    )
    severity: str | None = prop("severity", "How bad a False condition is: Error, Warning or Info.")
    last_transition_time: str | None = prop(
        "lastTransitionTime", "When the status last changed.", required=True, format="date-time"
    )
    reason: str | None = prop("reason", "Programmatic identifier of the last transition.")
    message: str | None = prop("message", "Human-readable details.")


@dataclass(kw_only=True)
class Metal3MachineStatus(Model):
    last_updated: str | None = prop(
        "lastUpdated", "When the status was last written.", format="date-time"
    )
    failure_reason: str | None = prop(
        "failureReason",
        "Set once a terminal problem needs a person (the host cannot provision the image).",
        enum=MachineStatusError,
    )
    failure_message: str | None = prop("failureMessage", "Details of the terminal problem.")
    addresses: list[MachineAddress] | None = prop(
        "addresses", "Addresses of the host: its NICs' IPs and its host name."
    )
    phase: str | None = prop("phase", "CAPM3's phase; not set here.")
    ready: bool | None = prop("ready", "True once the host is provisioned.")
    user_data: SecretReference | None = prop("userData", "The user data Secret in use.")
    rendered_data: ObjectReference | None = prop(
        "renderedData", "CAPM3's rendered Metal3Data; not set here."
    )
    meta_data: SecretReference | None = prop("metaData", "The metadata Secret in use.")
    network_data: SecretReference | None = prop("networkData", "The network data Secret in use.")
    conditions: list[ClusterCondition] | None = prop(
        "conditions", "Cluster API conditions: AssociateBMH and Ready."
    )


@dataclass(kw_only=True)
class Metal3Machine(Model):
    api_version: str | None = prop("apiVersion", "APIVersion of the object.")
    kind: str | None = prop("kind", "Kind of the object.")
    metadata: ObjectMeta | None = prop(
        "metadata", "Standard object metadata.", schema_override={"type": "object"}
    )
    spec: Metal3MachineSpec | None = prop("spec", "The machine wanted.")
    status: Metal3MachineStatus | None = prop("status", "The machine as observed.")

    @classmethod
    def new(cls, name: str, namespace: str, spec: Metal3MachineSpec) -> Metal3Machine:
        """A Metal3Machine as a client would create it."""
        return cls(
            api_version=INFRASTRUCTURE_API_VERSION,
            kind=METAL3MACHINE_KIND,
            metadata=ObjectMeta(name=name, namespace=namespace),
            spec=spec,
        )
