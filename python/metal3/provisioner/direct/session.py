"""What the direct provisioner keeps in memory per host, between reconciles.

Nothing here must survive a restart: the host's power, boot device and media are in its BMC,
the agent's token and results in the agent record, the lifecycle in the host's status. What
is here makes a running operator quicker and kinder to the BMC: the open BMC connection, the
background call in flight, and when a power change or an agent boot was asked for (so it is
not asked again while the BMC is still applying it, and so its timeout can be told). A
restarted operator rebuilds it from the BMC and the record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio

from metal3.bmc.address import BMCAddress, Driver
from metal3.bmc.credentials import Credentials
from metal3.bmc.interface import BMC, PowerAction
from metal3.bmc.interface import PowerState as BMCPower
from metal3.bmc.ipmiworkers import WorkerPool
from metal3.provisioner.direct.calls import BackgroundCalls

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Access:
    """What a BMC connection was made from: a change of any of it means a new connection."""

    address: str
    username: str
    password: str
    disable_certificate_verification: bool

    def __repr__(self) -> str:  # never the password
        return f"Access({self.address!r}, {self.username!r})"


@dataclass
class PowerRequest:
    action: PowerAction
    at: float  # monotonic time of the first request (the power timeout runs from it)
    sent: float = 0.0  # monotonic time it was last sent again (0: never re-sent)


@dataclass
class AgentBoot:
    """An agent boot this process asked for (or found under way after a restart)."""

    since: float  # monotonic: when the boot was first asked for (the agent timeout runs from it)
    phase: str  # "cycling": powering off first; "starting": power on requested; "running"
    started: float = 0.0  # monotonic: when power on was requested


class HostSession:
    """One host's BMC connection, background calls and timers."""

    def __init__(self, uid: str, namespace: str, name: str, calls: BackgroundCalls) -> None:
        self.uid = uid
        self.namespace = namespace
        self.name = name
        self.calls = calls
        self.access: Access | None = None
        self.address: BMCAddress | None = None
        self.bmc: BMC | None = None
        self.registered = False
        self.power_request: PowerRequest | None = None
        self.soft_off_since: float | None = None
        self.boot: AgentBoot | None = None
        self.finishing: str = ""  # the deploy whose boot from disk this process set up
        self.finishing_off = False  # ... and the host has been off since
        self.bmc_errors = 0  # BMC server errors (5xx) in a row, see DirectProvisioner._step
        # The last power state read, with its (provisioner clock) time; None after any other
        # BMC call, which may have changed it. See DirectProvisioner.power_state.
        self.power_seen: tuple[BMCPower, float] | None = None

    def __repr__(self) -> str:
        return f"HostSession({self.namespace}/{self.name})"


def connect_bmc(
    address: BMCAddress,
    access: Access,
    *,
    limiter: anyio.CapacityLimiter,
    pool: WorkerPool,
    call_timeout: float,
) -> BMC:
    """A driver object for the host's BMC, sharing the factory's thread limiter and IPMI
    worker pool (nothing is sent until the first call)."""
    credentials = Credentials(access.username, access.password)
    if address.driver is Driver.REDFISH:
        from metal3.bmc.redfish import RedfishBMC

        return RedfishBMC(
            address,
            credentials,
            verify=not access.disable_certificate_verification,
            limiter=limiter,
            call_timeout=call_timeout,
            read_timeout=min(30.0, call_timeout),
        )
    from metal3.bmc.ipmi import IPMIBMC

    return IPMIBMC(address, credentials, limiter=limiter, pool=pool, call_timeout=call_timeout)
