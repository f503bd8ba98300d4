"""The direct provisioner's settings: where the agent boots from, and its timeouts.

Kept free of heavy imports: the command line builds these before it imports the operator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Ironic's `[conductor]soft_power_off_timeout` default, which upstream Metal3 relies on for a
# soft power off (and the soft reboot's power off) before it falls back to a hard one.
UPSTREAM_SOFT_POWER_OFF_TIMEOUT = 600.0
# How long the agent has to report the result of its work after its boot was requested (as
# Ironic's `[conductor]deploy_callback_timeout`, 30 minutes).
DEFAULT_AGENT_TIMEOUT = 1800.0


@dataclass(frozen=True)
class AgentBootMedia:
    """What a host can boot the agent from.

    ``iso_url``: an ISO of the agent that BMCs download for virtual media (the `*-virtualmedia`
    schemes). ``kernel_url``/``initramfs_url``: the agent for network boot, served to the
    hosts by a network boot server (DHCP + PXE/iPXE) of your own;
    ``network_boot_server`` names a boot server that serves the agent to any host asking by
    network boot (the lab: `metal3 lab` plays one for its hosts). Network boot counts as
    configured with either the kernel and initramfs or a named server.
    """

    iso_url: str | None = None
    kernel_url: str | None = None
    initramfs_url: str | None = None
    network_boot_server: str | None = None

    @property
    def network_boot(self) -> bool:
        return bool(self.network_boot_server or (self.kernel_url and self.initramfs_url))


@dataclass(frozen=True)
class DirectSettings:
    media: AgentBootMedia = field(default_factory=AgentBootMedia)
    #: seconds since the agent's boot was requested within which its result must come
    agent_timeout: float = DEFAULT_AGENT_TIMEOUT
    #: seconds a soft power off may take before the host is powered off hard
    soft_power_off_timeout: float = UPSTREAM_SOFT_POWER_OFF_TIMEOUT
    #: seconds a requested power state may take to show before the request is an error
    power_timeout: float = 120.0
    #: seconds after which a power request (or an agent boot) whose effect has not shown is
    #: sent again: a BMC may acknowledge a request and lose it (sushy-tools' libvirt driver
    #: did, for a power off 70 ms after a power on), as Ironic's power-state sync re-sends
    power_resend_interval: float = 20.0
    #: the longest a reconcile waits for a BMC call; a slower call finishes in the background
    #: and wakes the host's reconcile when it is done
    bmc_wait: float = 2.0
    #: deadline of one BMC call (each request to the BMC; the driver's own timeouts apply too)
    bmc_call_timeout: float = 30.0
    #: seconds between looks at the BMC while a power change or a boot is under way
    poll_interval: float = 1.0
    #: seconds between looks at the agent's record while it works (its results also wake the
    #: host at once, through the agent API)
    agent_poll_interval: float = 15.0
    #: seconds between looks at the BMC and the agent's record while the agent boots (sooner
    #: when a re-send or the agent timeout falls due): a safety net only (a lost power on, a
    #: lost token), since the agent API hands the agent its work at its lookup; at 1 s,
    #: fifty booting hosts kept an emulated BMC busy
    agent_boot_poll_interval: float = 5.0
    #: worker processes for IPMI calls (pyghmi runs in them; see metal3.bmc.ipmiworkers)
    ipmi_workers: int = 8
    #: the state folder of a `metal3 bootserver` (shared with it): network-boot hosts' boot
    #: MACs are allowed there before each agent boot and forgotten once the agent is done
    boot_server_dir: Path | None = None
