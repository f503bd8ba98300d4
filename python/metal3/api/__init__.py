"""The metal3.io/v1alpha1 API: resource types, constants, CRDs and schema checks.

Types parse from and serialise to the Kubernetes JSON form (:class:`metal3.api.model.Model`);
the CRDs in ``crds/`` are generated from them (:mod:`metal3.api.crd`).
"""

from metal3.api import constants
from metal3.api.baremetalhost import (
    BareMetalHost,
    BareMetalHostSpec,
    BareMetalHostStatus,
    BMCDetails,
    CustomDeploy,
    Image,
    ProvisionStatus,
    RAIDConfig,
    RootDeviceHints,
)
from metal3.api.hardware import HardwareDetails
from metal3.api.hardwaredata import HardwareData, HardwareDataSpec
from metal3.api.meta import Condition, ObjectMeta, ObjectReference, SecretReference
from metal3.api.model import Model, ModelError

__all__ = [
    "BMCDetails",
    "BareMetalHost",
    "BareMetalHostSpec",
    "BareMetalHostStatus",
    "Condition",
    "CustomDeploy",
    "HardwareData",
    "HardwareDataSpec",
    "HardwareDetails",
    "Image",
    "Model",
    "ModelError",
    "ObjectMeta",
    "ObjectReference",
    "ProvisionStatus",
    "RAIDConfig",
    "RootDeviceHints",
    "SecretReference",
    "constants",
]
