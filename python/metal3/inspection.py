"""Hardware details from an agent's inventory, by the rules baremetal-operator applies.

The agent sends an inventory in ironic-python-agent's format. Upstream, Ironic keeps it and
derives two facts on the way (which NIC the host PXE-booted from, in its validate_interfaces
hook; what the switch said over LLDP, in its parse_lldp hook), then baremetal-operator's Ironic
provisioner turns inventory and facts into `status.hardware` (hardwaredetails.go). This module
does the three steps at once and returns the JSON that baremetal-operator writes for the same
inventory:

- `cpu`: `arch` (architecture), `model` (model_name), `clockMegahertz` (the number that starts
  `frequency`, rounded half away from zero; 0 when there is none), `count`, `flags` (sorted).
- `ramMebibytes`: `memory.physical_mb`.
- `nics`: one entry per interface and address: the IPv4 one, or the IPv6 one, or both as two
  entries, or one entry without `ip` when there is neither; each with `name`, `model`
  ("vendor product", leading spaces trimmed), `mac`, `ip`, `speedGbps` (speed_mbps / 1000,
  truncated), `pxe` (the interface's MAC is a valid MAC and is `boot.pxe_interface`, which may be
  given in pxelinux form `01-aa-bb-...`), `pciAddress`, and from LLDP (the first 64 interfaces,
  as Ironic): `lldp` (`switchID`, `portID`, `switchSystemName` from the chassis ID, port ID and
  system name TLVs), `vlans` (802.1Q VLAN name TLVs) and `vlanId` (802.1Q port VLAN ID TLV).
- `storage`: `name` (the disk's by_path when it has one, else its name), `alternateNames`
  (name, then by_path), `rotational`, `type` (HDD if rotational, NVME if the name starts with
  /dev/nvme, else SSD), `sizeBytes`, `vendor`, `model`, `serialNumber`, `wwn`,
  `wwnVendorExtension`, `wwnWithExtension`, `hctl`; in the inventory's order.
- `systemVendor` (`manufacturer`, `productName`, `serialNumber`), `firmware.bios` (`vendor`,
  `version`, `date` from `build_date`, or `date` when an inventory names it so), `hostname`.

Fields are left out when empty, zero or false, and `systemVendor`, `firmware.bios` and `cpu`
are always there, as Go's encoding/json writes baremetal-operator's types. Where this differs
from upstream: both MAC addresses are lower-cased before the PXE comparison (Ironic lower-cases
only the pxelinux form); LLDP VLAN IDs above 4094 and TLVs that Ironic's parser cannot read
(truncated, unknown subtype, bad UTF-8, bad hex) are ignored instead of failing inspection; and
`vlans`/`vlanId` are filled as baremetal-operator's own tests expect (its code reads them with Go
type assertions that JSON-decoded data never passes, so a real deployment shows none).

A malformed inventory (not JSON, not an object, a field of the wrong JSON type, no
`interfaces`, as Ironic refuses) raises :class:`InventoryError` naming the field; nothing is
half-converted. When a document has several problems, the one reported is the first in a fixed
order (the top-level fields' types, `interfaces` not empty, `system_vendor`, `memory`, `boot`,
each interface, each disk, `cpu`), whatever its key order. JSON text is accepted as orjson
accepts it (at most 1024 levels deep; integers of up to 64 bits, larger ones are numbers). A
parsed document must hold what orjson would give: a tuple, an integer beyond 64 bits or a str
with lone surrogates is refused as being of the wrong type.
`HardwareDetails.from_json(hardware_details_from_inventory(inv))` gives the typed model.

The conversion is native (`metal3._native`, built from rust/inventory): it parses the JSON and
builds the result in one pass, several times faster than json + model objects
(benches/test_bench_inspection.py). tests/inspection_reference.py keeps the Python
implementation it replaced, which the tests compare it with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from metal3._native import InventoryError
from metal3._native import hardware_details_from_document as _from_document
from metal3._native import hardware_details_from_json as _from_json
from metal3.api.constants import API_VERSION, BAREMETALHOST_KIND, HARDWAREDATA_KIND
from metal3.api.hardware import HardwareDetails

__all__ = [
    "InventoryError",
    "hardware_data_manifest",
    "hardware_details_from_inventory",
    "parse_inventory",
]


def parse_inventory(raw: bytes | str) -> dict[str, Any]:
    """Parse an inventory document and check every field this module reads."""
    _from_json(raw)  # the conversion is the check: the errors are hardware_details_from_inventory's
    document: dict[str, Any] = orjson.loads(raw)  # the JSON rules are orjson's: it reads the same
    return document


def hardware_details_from_inventory(inventory: Mapping[str, Any] | bytes | str) -> dict[str, Any]:
    """`status.hardware` (HardwareDetails JSON, camelCase) for an inventory, as upstream.

    The inventory is a parsed document or its JSON text (parsed and checked in one pass, as the
    operator receives it from an agent).
    """
    if isinstance(inventory, (bytes, str)):
        return _from_json(inventory)
    if type(inventory) is not dict and isinstance(inventory, Mapping):
        inventory = dict(inventory)
    return _from_document(inventory)  # refuses anything but a dict


def hardware_data_manifest(
    host_namespace: str | None,
    host_name: str,
    host_uid: str | None,
    details: Mapping[str, Any] | HardwareDetails,
) -> dict[str, Any]:
    """The HardwareData resource for a host: its name and namespace, owned by the host.

    The same shape the BareMetalHost reconciler creates (controller owner reference, so the
    garbage collector removes it with the host).
    """
    hardware = details.to_json() if isinstance(details, HardwareDetails) else dict(details)
    return {
        "apiVersion": API_VERSION,
        "kind": HARDWAREDATA_KIND,
        "metadata": {
            "name": host_name,
            "namespace": host_namespace,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": BAREMETALHOST_KIND,
                    "name": host_name,
                    "uid": host_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {"hardware": hardware},
    }
