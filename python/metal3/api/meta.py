"""Kubernetes types shared by every resource: object metadata, references, conditions, taints."""

from __future__ import annotations

from dataclasses import dataclass

from metal3.api.model import Model, prop


@dataclass(kw_only=True)
class OwnerReference(Model):
    api_version: str | None = prop("apiVersion", "API version of the owner.", required=True)
    kind: str | None = prop("kind", "Kind of the owner.", required=True)
    name: str | None = prop("name", "Name of the owner.", required=True)
    uid: str | None = prop("uid", "UID of the owner.", required=True)
    controller: bool | None = prop("controller", "True if the owner is the managing controller.")
    block_owner_deletion: bool | None = prop(
        "blockOwnerDeletion", "Foreground deletion waits for this object."
    )


@dataclass(kw_only=True)
class ObjectMeta(Model):
    name: str | None = prop("name", "Name, unique within the namespace.")
    generate_name: str | None = prop("generateName", "Prefix for a server-generated name.")
    namespace: str | None = prop("namespace", "Namespace of the object.")
    uid: str | None = prop("uid", "Unique identifier set by the server.")
    resource_version: str | None = prop("resourceVersion", "Opaque version for concurrency.")
    generation: int | None = prop("generation", "Sequence number of spec changes.")
    creation_timestamp: str | None = prop("creationTimestamp", "When the object was created.")
    deletion_timestamp: str | None = prop("deletionTimestamp", "When deletion was requested.")
    deletion_grace_period_seconds: int | None = prop(
        "deletionGracePeriodSeconds", "Grace period of a pending deletion."
    )
    labels: dict[str, str] | None = prop("labels", "Labels for selection.")
    annotations: dict[str, str] | None = prop("annotations", "Unstructured key/value data.")
    owner_references: list[OwnerReference] | None = prop(
        "ownerReferences", "Objects this one depends on."
    )
    finalizers: list[str] | None = prop("finalizers", "Must be empty before deletion completes.")


@dataclass(kw_only=True)
class ObjectReference(Model):
    """A reference to any object (`corev1.ObjectReference`)."""

    api_version: str | None = prop("apiVersion", "API version of the referent.")
    kind: str | None = prop("kind", "Kind of the referent.")
    name: str | None = prop("name", "Name of the referent.")
    namespace: str | None = prop("namespace", "Namespace of the referent.")
    uid: str | None = prop("uid", "UID of the referent.")
    resource_version: str | None = prop("resourceVersion", "Resource version of the referent.")
    field_path: str | None = prop("fieldPath", "A piece of the referent, instead of the whole.")


@dataclass(kw_only=True)
class SecretReference(Model):
    """A Secret by name and namespace (`corev1.SecretReference`)."""

    name: str | None = prop("name", "Name of the Secret.")
    namespace: str | None = prop("namespace", "Namespace of the Secret (default: the host's).")


@dataclass(kw_only=True)
class Condition(Model):
    """`metav1.Condition`: one aspect of the object's state."""

    type: str | None = prop(
        "type",
        "Type of condition in CamelCase.",
        required=True,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        max_length=316,
    )
    status: str | None = prop(
        "status", "Status of the condition.", required=True, enum=("True", "False", "Unknown")
    )
    observed_generation: int | None = prop(
        "observedGeneration", "The generation the condition was set for.", minimum=0, format="int64"
    )
    last_transition_time: str | None = prop(
        "lastTransitionTime", "When the status last changed.", required=True, format="date-time"
    )
    reason: str | None = prop(
        "reason",
        "Programmatic identifier of the last transition.",
        required=True,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        min_length=1,
        max_length=1024,
    )
    message: str | None = prop(
        "message", "Human-readable details of the last transition.", required=True, max_length=32768
    )


@dataclass(kw_only=True)
class Taint(Model):
    """`corev1.Taint`, copied by Cluster API onto the Node."""

    key: str | None = prop("key", "The taint key.", required=True)
    value: str | None = prop("value", "The taint value.")
    effect: str | None = prop(
        "effect",
        "The effect on pods that do not tolerate the taint.",
        required=True,
    )
    time_added: str | None = prop(
        "timeAdded", "When a NoExecute taint was added.", format="date-time"
    )
