"""HostClaim and HostDeployPolicy (metal3.io/v1alpha1): a tenant asks for a host by selector
without seeing its BMC; the hosts' owner says which tenants' namespaces may bind them.

Field names are upstream's (baremetal-operator's hostclaim_types.go and hostdeploypolicy_types.go).
One addition: ``status.provisioningState`` mirrors the bound host's provisioning state, so
``kubectl get hostclaims`` can show it.
"""

from __future__ import annotations

from dataclasses import dataclass

from metal3.api.baremetalhost import CustomDeploy, Image
from metal3.api.constants import API_VERSION, HOSTCLAIM_KIND, HOSTDEPLOYPOLICY_KIND
from metal3.api.meta import Condition, ObjectMeta, ObjectReference, SecretReference
from metal3.api.model import Model, prop


@dataclass(kw_only=True)
class HostSelectorRequirement(Model):
    key: str | None = prop("key", "The label key.", required=True)
    operator: str | None = prop(
        "operator",
        "In, NotIn, Exists, DoesNotExist, or their selection.Operator spellings "
        "(in, notin, exists, !, =, ==, !=, gt, lt).",
        required=True,
    )
    values: list[str] | None = prop("values", "The values; none for Exists and DoesNotExist.")


@dataclass(kw_only=True)
class HostSelector(Model):
    """Which BareMetalHosts the claim may bind: every label and expression must match."""

    match_labels: dict[str, str] | None = prop(
        "matchLabels", "Labels a chosen BareMetalHost must carry, with these values."
    )
    match_expressions: list[HostSelectorRequirement] | None = prop(
        "matchExpressions", "Label expressions that must hold on a chosen BareMetalHost."
    )
    in_namespace: str | None = prop(
        "inNamespace",
        "The one namespace to take a BareMetalHost from; default: the claim's own and every "
        "namespace whose HostDeployPolicy allows the claim's.",
    )


@dataclass(kw_only=True)
class HostClaimSpec(Model):
    powered_on: bool | None = prop(
        "poweredOn", "Whether the host should be powered on (and so provisioned).", required=True
    )
    image: Image | None = prop("image", "Image to provision; setting it starts provisioning.")
    user_data: SecretReference | None = prop(
        "userData", "Secret (in the claim's namespace) with the user data for the config drive."
    )
    network_data: SecretReference | None = prop(
        "networkData", "Secret (in the claim's namespace) with network data for the config drive."
    )
    meta_data: SecretReference | None = prop(
        "metaData", "Secret (in the claim's namespace) with metadata for the config drive."
    )
    custom_deploy: CustomDeploy | None = prop(
        "customDeploy", "A custom deploy procedure instead of writing an image."
    )
    host_selector: HostSelector | None = prop(
        "hostSelector", "Matching criteria for labels on BareMetalHosts."
    )
    consumer_ref: ObjectReference | None = prop(
        "consumerRef", "What uses the claim, e.g. a Metal3Machine."
    )
    failure_domain: str | None = prop(
        "failureDomain",
        "Preferred failure domain: hosts labelled infrastructure.cluster.x-k8s.io/failure-domain "
        "with this value are chosen first.",
    )


@dataclass(kw_only=True)
class NamespacedName(Model):
    """Upstream's HostClaim `ObjectReference`: a name and namespace."""

    namespace: str | None = prop("namespace", "Namespace of the object bound.", required=True)
    name: str | None = prop("name", "Name of the object bound.", required=True)


@dataclass(kw_only=True)
class HostClaimStatus(Model):
    last_updated: str | None = prop(
        "lastUpdated", "When the status was last observed.", format="date-time"
    )
    conditions: list[Condition] | None = prop("conditions", "Observations of the claim's state.")
    bare_metal_host: NamespacedName | None = prop("bareMetalHost", "The bound BareMetalHost.")
    hardware_data: NamespacedName | None = prop("hardwareData", "The bound host's HardwareData.")
    powered_on: bool | None = prop("poweredOn", "The host's power state last seen.")
    provisioning_state: str | None = prop(
        "provisioningState", "The bound host's provisioning state (this project's addition)."
    )


@dataclass(kw_only=True)
class HostClaim(Model):
    api_version: str | None = prop("apiVersion", "APIVersion of the object.")
    kind: str | None = prop("kind", "Kind of the object.")
    metadata: ObjectMeta | None = prop(
        "metadata", "Standard object metadata.", schema_override={"type": "object"}
    )
    spec: HostClaimSpec | None = prop("spec", "The host asked for and its workload.")
    status: HostClaimStatus | None = prop("status", "The bound host and how it is doing.")

    @classmethod
    def new(cls, name: str, namespace: str, spec: HostClaimSpec) -> HostClaim:
        return cls(
            api_version=API_VERSION,
            kind=HOSTCLAIM_KIND,
            metadata=ObjectMeta(name=name, namespace=namespace),
            spec=spec,
        )


@dataclass(kw_only=True)
class NameValuePair(Model):
    name: str | None = prop("name", "Name of the expected label.", required=True)
    value: str | None = prop("value", "If given, the value the label must have.")


@dataclass(kw_only=True)
class HostClaimNamespaces(Model):
    """Constraints on a claim's namespace; every one given must hold."""

    names: list[str] | None = prop("names", "Namespaces whose HostClaims may bind the hosts.")
    name_matches: str | None = prop(
        "nameMatches",
        "Regular expression searched in the HostClaim's namespace name (`^prod$` for exactly "
        "prod).",
    )
    has_labels: list[NameValuePair] | None = prop(
        "hasLabels", "Labels the HostClaim's namespace must carry (and their values, if given)."
    )


@dataclass(kw_only=True)
class HostDeployPolicySpec(Model):
    host_claim_namespaces: HostClaimNamespaces | None = prop(
        "hostClaimNamespaces",
        "Which namespaces' HostClaims may bind the hosts of this namespace; `{}`: any. Absent: "
        "none but this namespace's own.",
    )


@dataclass(kw_only=True)
class HostDeployPolicy(Model):
    api_version: str | None = prop("apiVersion", "APIVersion of the object.")
    kind: str | None = prop("kind", "Kind of the object.")
    metadata: ObjectMeta | None = prop(
        "metadata", "Standard object metadata.", schema_override={"type": "object"}
    )
    spec: HostDeployPolicySpec | None = prop("spec", "Who may bind this namespace's hosts.")
    status: dict[str, str] | None = prop("status", "Empty (upstream's HostDeployPolicyStatus).")

    @classmethod
    def new(cls, name: str, namespace: str, spec: HostDeployPolicySpec) -> HostDeployPolicy:
        return cls(
            api_version=API_VERSION,
            kind=HOSTDEPLOYPOLICY_KIND,
            metadata=ObjectMeta(name=name, namespace=namespace),
            spec=spec,
        )
