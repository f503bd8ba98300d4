"""The host's hardware inventory, in the document ironic-python-agent's `GenericHardwareManager`
sends (`list_hardware_info()`), so that tools built for Ironic inventories read ours.

Sections and their sources are described in the modules: `cpu`, `memory`, `disks`,
`interfaces`, `system` (system_vendor, hostname), `boot`, `bmc`. Every source is optional: a
missing file or tool leaves its fields out (a section whose source is missing is absent from
the document; a field of a present entry is null) and logs the reason; nothing raises.

Differences from IPA, on purpose: loop devices with a backing file are listed as disks (this
project's disks are loop devices); virtual Ethernet (veth) interfaces are listed when there is
no device-backed one (this project's lab hosts); each interface also carries `speed_mbps`,
`driver` and `pxe_enabled`, each disk `logical_sectors`, `physical_sectors` and `tran`, and
`cpu` a `socket_count`; `bmc_mac` is null, not absent, when there is none.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from metal3.agent.inventory.bmc import collect_bmc
from metal3.agent.inventory.boot import collect_boot
from metal3.agent.inventory.cpu import collect_cpu
from metal3.agent.inventory.disks import collect_disks
from metal3.agent.inventory.interfaces import VethPolicy, collect_interfaces
from metal3.agent.inventory.memory import collect_memory
from metal3.agent.inventory.sysroot import SysRoot
from metal3.agent.inventory.system import collect_hostname, collect_system_vendor

__all__ = ["SysRoot", "VethPolicy", "collect", "collect_inventory"]

log = logging.getLogger(__name__)


def collect_inventory(root: Path = Path("/"), *, veth: VethPolicy = "auto") -> dict[str, Any]:
    """The inventory of the host whose procfs, sysfs and /dev are under `root`.

    With a root other than `/` (a recorded tree), tool outputs are read from `ROOT/.tools/`
    (see `metal3.agent.inventory.sysroot`). `veth` says when veth interfaces are listed.
    """
    return collect(SysRoot(root), veth=veth)


def collect(host: SysRoot, *, veth: VethPolicy = "auto") -> dict[str, Any]:
    """The inventory as seen through `host`, in IPA's key order; sections that cannot be
    read are left out."""
    start = time.monotonic()
    bmc = collect_bmc(host)
    sections: dict[str, Any] = {
        "interfaces": collect_interfaces(host, veth=veth),
        "cpu": collect_cpu(host),
        "disks": collect_disks(host),
        "memory": collect_memory(host),
        "bmc_address": bmc.address,
        "bmc_v6address": bmc.v6address,
        "system_vendor": collect_system_vendor(host),
        "boot": collect_boot(host),
        "hostname": collect_hostname(host),
    }
    inventory = {key: value for key, value in sections.items() if value is not None}
    inventory["bmc_mac"] = bmc.mac
    log.info("inventory collected in %.3f s", time.monotonic() - start)
    return inventory
