"""The direct provisioner: each lifecycle step done with the host's BMC and the metal3 agent.

One instance per host per reconcile. Every call looks at where the host is (its BMC's power
state, the agent's record, the host's status), sends at most a few quick requests, and says
done, failed or in progress; nothing waits for a power change or the agent. So a reconcile is
short, and an operator killed at any moment finds the host where it is and carries on.

How the agent works for a step (`_agent`): the step's work has an id (`work_for`, the same
rule the agent API asks the agent by); its recorded result ends the wait. Until then:

- host on and an agent token held (an agent looked up since the last boot): the agent is at
  work, wait (its result wakes the host through the agent API's `on_result`); unless the
  record says that token was lost (a lookup's answer that never reached the agent, see
  `AgentRecord.note_token_lost`): then as below, through off to a new agent boot;
- host on and no token: the host runs something else (its OS, or an agent booted before a
  restart that has not looked up): power it off first;
- host off: boot the agent: rotate the token (the new agent gets one), insert the agent ISO
  and boot from CD once (virtual-media schemes) or boot from the network once (the others),
  power on.

The agent has `agent_timeout` from the boot request to report; past it the host is powered
off and the step fails saying so. Results are never asked twice (`metal3.agentapi.commands`):
a restart finds a deploy's result, or its agent still at work with its token, and waits: each
image is written once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from metal3.agent.hints import InvalidHintsError, NoRootDeviceError, select_root_device
from metal3.agentapi.commands import Command, CommandName, work_for
from metal3.agentapi.records import AgentRecord, AgentRecords
from metal3.api.baremetalhost import BareMetalHost
from metal3.api.constants import BootMode
from metal3.api.hardware import HardwareDetails
from metal3.api.model import Model, ModelError
from metal3.bmc.address import BMCAddress, BootMethod, parse_address
from metal3.bmc.errors import (
    BMCAddressError,
    BMCError,
    BMCRefusedError,
    BMCServerError,
    BMCUnsupportedError,
)
from metal3.bmc.interface import BMC, BootDevice, PowerAction
from metal3.bmc.interface import PowerState as BMCPower
from metal3.bmc.registration import registration_error_message, registration_precheck
from metal3.bootserver.registry import BootServer, BootServerError
from metal3.inspection import InventoryError, hardware_details_from_inventory
from metal3.provisioner.base import (
    DONE,
    InspectionResult,
    ManagementAccessData,
    PowerState,
    PrepareData,
    ProvisionData,
    Result,
    failed,
    in_progress,
)
from metal3.provisioner.direct.calls import StillRunning
from metal3.provisioner.direct.oob import OUT_OF_BAND, OUT_OF_BAND_ANNOTATION
from metal3.provisioner.direct.oob import hardware_from_inventory as oob_hardware
from metal3.provisioner.direct.session import Access, AgentBoot, HostSession, PowerRequest

if TYPE_CHECKING:
    from metal3.provisioner.direct.factory import DirectProvisionerFactory

log = logging.getLogger(__name__)

VIRTUAL_MEDIA = BootMethod.VIRTUAL_MEDIA
FIRST_POWER_POLL = 0.1  # seconds after a power request before its effect is first looked for
FRESH_POWER_READ = 0.5  # seconds a power read stands for the state machine's next question
BMC_SERVER_ERRORS = 6  # BMC server errors (5xx) in a row that fail a step; fewer are retried
JsonObject = dict[str, Any]


class StepFailed(Exception):
    """A step cannot go on; the message is for the host's status."""


@dataclass(frozen=True)
class AgentStep:
    """Where the agent's work for a step stands: ``result`` to return (in progress or
    failed), or the agent's ``outcome`` (it succeeded) with the record it was read from."""

    result: Result | None = None
    outcome: JsonObject | None = None
    record: AgentRecord | None = None


def _seconds(value: float) -> str:
    minutes, seconds = divmod(round(value), 60)
    if minutes and seconds:
        return f"{minutes}m{seconds}s"
    return f"{minutes}m" if minutes else f"{seconds}s"


class DirectProvisioner:
    def __init__(
        self, factory: DirectProvisionerFactory, host: BareMetalHost, session: HostSession
    ) -> None:
        self.factory = factory
        self.host = host  # the state machine's own object: read it as the step changes it
        self.session = session
        self.settings = factory.settings
        self._clock: Callable[[], float] = factory.clock
        # The power read in this reconcile, with no BMC call since (`_current_power`).
        self._power_now: BMCPower | None = None
        # The agent record as read or written in this reconcile (`_change_record`).
        self._record: AgentRecord | None = None

    @property
    def provisioning_id(self) -> str | None:
        """The host's uid: stable for its lifetime, new for a host re-created by name."""
        return self.session.uid

    # --- plumbing ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"{self.session.namespace}/{self.session.name}"

    def _bmc(self) -> tuple[BMC, BMCAddress]:
        session = self.session
        if session.bmc is None or session.address is None:
            raise StepFailed("the host's BMC is not registered with this operator yet")
        return session.bmc, session.address

    async def _bmc_call(self, label: str, func: Callable[[BMC], Awaitable[Any]]) -> Any:
        bmc, _ = self._bmc()
        self.session.power_seen = None  # any call but a read may change the power
        self._power_now = None
        return await self.session.calls.call(label, lambda: func(bmc))

    async def _step(self, what: str, step: Callable[[], Awaitable[Result]]) -> Result:
        """Run a step, turning the expected interruptions into Results."""
        try:
            result = await step()
        except StillRunning:
            # The call's end wakes the host; the requeue is only a safety net.
            return in_progress(self.settings.bmc_call_timeout)
        except StepFailed as exc:
            return failed(str(exc))
        except BMCServerError as exc:
            return self._bmc_trouble(what, exc)
        except BMCError as exc:
            return failed(f"{what}: {exc}")
        self.session.bmc_errors = 0
        return result

    def _bmc_trouble(self, what: str, exc: BMCServerError) -> Result:
        """A BMC that failed a call on its side (a 5xx) is asked again a little later, the step
        taking up from what the BMC then says; only `BMC_SERVER_ERRORS` in a row fail the
        step. Failing at once made a busy BMC's one 500 cost a whole new provisioning."""
        session = self.session
        session.bmc_errors += 1
        if session.bmc_errors >= BMC_SERVER_ERRORS:
            session.bmc_errors = 0
            return failed(f"{what}: {exc} ({BMC_SERVER_ERRORS} times in a row)")
        delay = min(self.settings.poll_interval * 2 ** (session.bmc_errors - 1), 30.0)
        log.warning("%s: %s: %s; trying again in %.1f s", self.name, what, exc, delay)
        return in_progress(delay)

    def _host_json(self) -> JsonObject:
        return self.host.to_json()

    def _records(self) -> AgentRecords:
        return AgentRecords(self.factory.services_or_fail().client)

    @property
    def _uefi(self) -> bool:
        mode = self.host.spec.boot_mode if self.host.spec else None
        return mode != BootMode.LEGACY.value

    @property
    def _may_power_off(self) -> bool:
        return not (self.host.spec and self.host.spec.disable_power_off)

    # --- registration --------------------------------------------------------------------

    async def register(self, data: ManagementAccessData, *, force: bool) -> Result:
        node = self.session.uid
        try:
            address = parse_address(data.address)
        except BMCAddressError as exc:
            return failed(registration_error_message(exc, node=node))
        refusal = registration_precheck(
            address, boot_mac_address=data.boot_mac_address, boot_mode=data.boot_mode
        )
        if refusal is not None:
            return failed(refusal)
        access = Access(
            data.address,
            data.credentials.username,
            data.credentials.password,
            data.disable_certificate_verification,
        )
        session = self.session
        if session.access == access and session.registered and not force:
            return DONE
        if session.access != access:
            self.factory.replace_bmc(session, address, access)
        try:
            state = await self._bmc_call("register", _validate_and_read_power)
        except StillRunning:
            return in_progress(self.settings.bmc_call_timeout)
        except BMCError as exc:
            session.registered = False
            return failed(registration_error_message(exc, node=node, address=address))
        session.registered = True
        log.info("%s: BMC %s registered (power %s)", self.name, address, state)
        return DONE

    async def adopt(self, data: ProvisionData) -> Result:
        """Nothing to do on the hardware: the host runs its workload already."""
        return DONE

    # --- power ---------------------------------------------------------------------------

    async def _read_power(self) -> BMCPower:
        state: BMCPower = await self._bmc_call("power-state", lambda bmc: bmc.power_state())
        self.session.power_seen = (state, self._clock())
        self._power_now = state
        return state

    async def _current_power(self) -> BMCPower:
        """The power read earlier in this reconcile, else a new read. The state machine asks
        `power_state`, then `power_on`/`power_off` for a host not as wanted: reading again
        there started a second background read on a slow BMC (a short `bmc_wait`), the
        reconcile ended in progress, the next one did the same, and the host never got its
        power request (a CI failure of test_a_bmc_500_while_powering_on...[0.001])."""
        if self._power_now is not None:
            return self._power_now
        return await self._read_power()

    async def _power(
        self, on: bool, *, hard: bool = True, known: BMCPower | None = None
    ) -> Result | None:
        """Bring the host to power on/off; None once it is there, else in progress or failed.
        ``known`` is the state this step read just now, so it is not read again.

        Non-blocking: a request is sent and its effect polled (BMCs apply power changes
        seconds later); one whose effect has not shown after `power_resend_interval` is sent
        again, up to `power_timeout`. Soft power off falls back to a hard one when the BMC
        refuses it or after `soft_power_off_timeout` (Ironic's default, which upstream relies
        on).
        """
        session, settings = self.session, self.settings
        state = known if known is not None else await self._current_power()
        wanted = BMCPower.ON if on else BMCPower.OFF
        if state == wanted:
            self._power_reached()
            return None
        now = self._clock()
        pending = session.power_request
        poll = self._power_poll(now - pending.at if pending else settings.poll_interval)
        if state not in (BMCPower.ON, BMCPower.OFF):
            return poll  # changing, or the BMC cannot tell yet
        if on:
            action = PowerAction.ON
        elif hard:
            action = PowerAction.HARD_OFF
        elif session.soft_off_since is None:
            action = PowerAction.SOFT_OFF
        elif now - session.soft_off_since >= settings.soft_power_off_timeout:
            if session.power_request and session.power_request.action == PowerAction.SOFT_OFF:
                log.info(
                    "%s: soft power off not done after %s; powering off hard",
                    self.name,
                    _seconds(settings.soft_power_off_timeout),
                )
            action = PowerAction.HARD_OFF
        else:
            action = PowerAction.SOFT_OFF
        request = session.power_request
        if request is not None and request.action == action:
            if action == PowerAction.SOFT_OFF:
                return poll  # the soft timeout above decides
            if now - request.at >= settings.power_timeout:
                session.power_request = None
                raise StepFailed(
                    f"the host did not power {'on' if on else 'off'} within "
                    f"{_seconds(settings.power_timeout)} of the request to its BMC"
                )
            if now - max(request.at, request.sent) < settings.power_resend_interval:
                return poll
            log.info(
                "%s: power %s requested %s ago has not shown; sending it again",
                self.name,
                action,
                _seconds(now - request.at),
            )
            await self._bmc_call(f"power-{action}", lambda bmc: bmc.request_power(action))
            request.sent = now
            return self._power_poll(0.0)
        if not on:
            await self._end_agent_session()
        if action == PowerAction.SOFT_OFF:
            try:
                await self._bmc_call(f"power-{action}", lambda bmc: bmc.request_power(action))
            except (BMCUnsupportedError, BMCRefusedError) as exc:
                log.info("%s: soft power off refused (%s); powering off hard", self.name, exc)
                action = PowerAction.HARD_OFF
            else:
                session.soft_off_since = now
        if action != PowerAction.SOFT_OFF:
            await self._bmc_call(f"power-{action}", lambda bmc: bmc.request_power(action))
        log.info("%s: power %s requested", self.name, action)
        session.power_request = PowerRequest(action, now)
        return await self._look_at_once(wanted)

    async def _look_at_once(self, wanted: BMCPower) -> Result | None:
        """One power read right after a request; None if the host is already as wanted.

        A BMC that applies the change before it answers the request (an emulator, some BMCs
        for a power off) is seen here, and the step goes on in this reconcile instead of a
        `FIRST_POWER_POLL` and a trip through the work queue later: in a burst of fifty hosts
        that trip was the wait behind every other host's reconcile, three times per
        provisioning. A BMC that applies it later costs this one read, then the usual polls."""
        if await self._read_power() == wanted:
            self._power_reached()
            return None
        return self._power_poll(0.0)

    def _power_reached(self) -> None:
        """The host is as wanted: no request (nor soft power off) is pending any more."""
        self.session.power_request = None
        self.session.soft_off_since = None

    async def _end_agent_session(self) -> None:
        """Before any power off: the agent running now (if any) loses its token, and none is
        given until the next agent boot. A BMC may report the host off before its power is cut
        (a lagging BMC, an emulator under load); an agent booted for one step that lives on
        meanwhile must not take the next step's work (the inspection boot cleaning the disks,
        then the cleaning boot cleaning them again)."""
        await self._change_record(AgentRecord.agent_gone)

    async def _change_record(self, change: Callable[[AgentRecord], object]) -> None:
        """Change the host's agent record (`AgentRecords.change`), starting from the record
        read or written earlier in this reconcile, if any, rather than reading it again: one
        API request less per change, two or three changes per provisioning."""
        host, current, self._record = self._host_json(), self._record, None
        _, self._record = await self._records().change(host, change, current=current)

    def _power_poll(self, since_request: float) -> Result:
        """Look again soon after a power request, then less and less often (the delay
        doubles from `FIRST_POWER_POLL` up to `poll_interval`): a BMC that applies the
        change at once is seen within a fraction of a second, where a fixed `poll_interval`
        added up to that much to every power change (two per provisioning), and a slow one
        costs a few more power reads."""
        interval = self.settings.poll_interval
        return in_progress(min(interval, max(FIRST_POWER_POLL, since_request)))

    async def power_on(self, *, force: bool) -> Result:
        async def step() -> Result:
            return await self._power(True) or DONE

        return await self._step("power on", step)

    async def power_off(self, *, hard: bool) -> Result:
        async def step() -> Result:
            return await self._power(False, hard=hard) or DONE

        return await self._step("power off", step)

    async def power_state(self) -> PowerState:
        """The host's power, for the state machine's power management: a read less than
        `FRESH_POWER_READ` old (a step that just brought the host on or off) is used as it
        is, not asked of the BMC again; on real BMCs a read takes up to seconds."""
        seen = self.session.power_seen
        try:
            if seen is not None and self._clock() - seen[1] < FRESH_POWER_READ:
                state = self._power_now = seen[0]
            else:
                state = await self._read_power()
        except (StillRunning, StepFailed, BMCError) as exc:
            log.debug("%s: power state unknown: %s", self.name, exc)
            return PowerState(None)
        if state == BMCPower.ON:
            return PowerState(True)
        if state == BMCPower.OFF:
            return PowerState(False)
        return PowerState(None)

    # --- the agent -----------------------------------------------------------------------

    def _boot_media_problem(self, address: BMCAddress) -> str | None:
        media = self.settings.media
        method = address.info.boot_method
        if method is BootMethod.VIRTUAL_MEDIA:
            if not media.iso_url:
                return (
                    f"no agent boot media configured for {address.info.name} hosts (virtual "
                    "media): start the operator with --agent-iso-url (an ISO of the agent "
                    "the BMC downloads) or --lab DIR"
                )
        elif method is BootMethod.PXE:
            if not media.network_boot:
                return (
                    f"no agent boot media configured for {address.info.name} hosts (network "
                    "boot): start the operator with --agent-kernel-url and "
                    "--agent-initramfs-url (served to the hosts by your network boot "
                    "server) or --lab DIR"
                )
        else:
            return (
                f"booting the agent by {method} ({address.info.name}) is not supported by the "
                "direct provisioner; use a -virtualmedia scheme or network boot"
            )
        return None

    async def _agent(self, command: str) -> AgentStep:
        """The outcome of the agent's ``command`` for the host's current state, booting the
        agent as needed (see the module doc)."""
        services = self.factory.services_or_fail()
        if not services.agent_api:
            raise StepFailed(
                f"the agent is needed to {command.replace('_', ' ')}, but this operator does "
                "not serve the agent API: start it with --agent-listen (or --lab DIR)"
            )
        _, address = self._bmc()
        problem = self._boot_media_problem(address)
        if problem is not None:
            raise StepFailed(problem)
        host = self._host_json()
        record = self._record = await self._records().get(host)
        work = work_for(host, record)
        if not isinstance(work, Command) or work.name != command:
            raise StepFailed(
                f"internal: the agent would not be asked to {command} now "
                f"({work if isinstance(work, str) else work.name})"
            )
        done = record.results.get(work.id)
        if done is not None:
            self.session.boot = None
            if command != CommandName.CLEAN or done.status != "succeeded":
                self._forget_network_boot()  # (an agent that cleaned stays up for a deploy)
            if done.status == "succeeded":
                return AgentStep(outcome=done.result or {}, record=record)
            reason = done.error or "no reason given"
            log.info("%s: the agent's %s failed: %s", self.name, command, reason)
            await self._power_off_quietly()
            return AgentStep(failed(f"the agent's {command.replace('_', ' ')} failed: {reason}"))
        return AgentStep(await self._keep_agent_going(host, record, work, address))

    async def _keep_agent_going(
        self, host: JsonObject, record: AgentRecord, work: Command, address: BMCAddress
    ) -> Result:
        session, settings = self.session, self.settings
        now = self._clock()
        boot = session.boot
        if boot is not None and now - boot.since >= settings.agent_timeout:
            return await self._agent_timed_out(record, work)
        state = await self._read_power()
        if state == BMCPower.ON:
            if record.token_lost:
                # The agent never got its token (the lookup's answer was lost: an operator
                # killed mid-lookup) and waits for one that will not come: boot it again.
                log.info("%s: the agent lost its token; booting it again", self.name)
            elif record.token_from_booted_agent:
                if boot is None:
                    # An agent this process did not boot (an operator restart): its token
                    # tells since when it has been up. Only a token issued after the last
                    # agent boot counts: one that the host's own OS (a tenant's) got by
                    # looking itself up must never stand in for the agent's work.
                    session.boot = boot = AgentBoot(since=now - _age(record), phase="running")
                    if now - boot.since >= settings.agent_timeout:
                        return await self._agent_timed_out(record, work)
                boot.phase = "running"
                return in_progress(settings.agent_poll_interval)
            if boot is not None and boot.phase == "starting" and not record.token_lost:
                return self._boot_poll(boot, now)  # booting; no lookup yet
            # On, but not running an agent of ours: through off, then boot the agent.
            if not self._may_power_off:
                raise StepFailed(
                    "the host is powered on and spec.disablePowerOff forbids powering it "
                    "off to boot the agent"
                )
            session.boot = AgentBoot(since=boot.since if boot else now, phase="cycling")
            log.info("%s: powering off to boot the agent for %s", self.name, work.name)
            # Off already (seen right after the request): the boot is the next look's.
            return await self._power(False) or in_progress(FIRST_POWER_POLL)
        if state == BMCPower.OFF:
            if boot is not None and boot.phase == "starting":
                # Our power on is on its way, unless the boot call that outlived its
                # reconcile failed since: then that is the step's error (or a retry).
                error = session.calls.take_failure("boot-agent")
                if error is not None:
                    session.boot = session.power_request = None
                    raise error
                if now - boot.started < settings.power_resend_interval:
                    return self._boot_poll(boot, now)
                # Still off: the BMC lost the power on (or the boot device); boot again
                # (the agent timeout, from the first boot request, still bounds it all).
                log.info(
                    "%s: the agent's boot requested %s ago has not powered the host on; "
                    "booting it again",
                    self.name,
                    _seconds(now - boot.started),
                )
            await self._change_record(AgentRecord.expect_agent)  # the agent we boot: a new token
            starting = AgentBoot(since=boot.since if boot else now, phase="starting", started=now)
            session.calls.forget("boot-agent")  # a new boot: no earlier boot's outcome
            try:
                await self._bmc_call("boot-agent", lambda bmc: self._boot_agent(bmc, address))
            except StillRunning:
                # A slow BMC: the boot goes on in the background, and the reconcile its end
                # wakes finds the host on (or still off) without asking for this call again.
                # It must know the boot is ours, or it powers the host off again, and an
                # earlier power-off request left as pending waits for a change never asked.
                session.power_request = PowerRequest(PowerAction.ON, now)
                session.boot = starting
                raise
            session.power_request = PowerRequest(PowerAction.ON, now)
            session.boot = starting
            log.info(
                "%s: booting the agent (%s) for %s",
                self.name,
                address.info.boot_method,
                work.name,
            )
            return self._boot_poll(starting, now)
        return in_progress(settings.poll_interval)

    def _boot_poll(self, boot: AgentBoot, now: float) -> Result:
        """The next look while the agent boots: after `agent_boot_poll_interval`, or sooner
        when the boot's re-send or the agent timeout falls due first."""
        settings = self.settings
        due = min(
            settings.agent_boot_poll_interval,
            boot.started + settings.power_resend_interval - now,
            boot.since + settings.agent_timeout - now,
        )
        return in_progress(max(FIRST_POWER_POLL, due))

    async def _boot_agent(self, bmc: BMC, address: BMCAddress) -> None:
        """Boot device (and media) for the agent, then power on; one background call."""
        if address.info.boot_method is BootMethod.VIRTUAL_MEDIA:
            iso = self.settings.media.iso_url
            assert iso is not None
            await bmc.insert_media(iso)
            await bmc.set_boot_device(BootDevice.CD, persistent=False, uefi=self._uefi)
        else:
            self._allow_network_boot()
            await bmc.set_boot_device(BootDevice.PXE, persistent=False, uefi=self._uefi)
        await bmc.request_power(PowerAction.ON)

    def _allow_network_boot(self) -> None:
        """With a boot server (`boot_server_dir`), let the host's boot MAC boot the agent."""
        folder = self.settings.boot_server_dir
        if folder is None:
            return
        mac = self.host.spec.boot_mac_address if self.host.spec else None
        if not mac:
            raise StepFailed("network boot through the boot server needs spec.bootMACAddress")
        try:
            BootServer(folder).allow(mac, name=self.name)
        except (OSError, BootServerError) as exc:
            raise StepFailed(f"the boot server's folder {folder}: {exc}") from None

    def _forget_network_boot(self) -> None:
        """The agent is done: the boot server stops answering the host's boot MAC."""
        folder = self.settings.boot_server_dir
        mac = self.host.spec.boot_mac_address if self.host.spec else None
        if folder is None or not mac:
            return
        try:
            BootServer(folder).forget(mac)
        except (OSError, BootServerError) as exc:
            log.warning("%s: the boot server's folder %s: %s", self.name, folder, exc)

    async def _agent_timed_out(self, record: AgentRecord, work: Command) -> Result:
        """Power the host off, then fail the step saying so. A power off request that is
        slow (a loaded BMC) is waited for, the boot kept meanwhile, so the reconcile its end
        wakes comes back here: the message says the host was powered off only once its BMC
        took the request (and says it was not, if the BMC failed it)."""
        timeout = _seconds(self.settings.agent_timeout)
        if record.token_hash:
            what = f"the agent did not report the result of {work.name} within {timeout}"
        else:
            what = f"the agent did not call back within {timeout} of its boot"
        self._forget_network_boot()
        if not self._may_power_off:
            self.session.boot = None
            return failed(what)
        await self._end_agent_session()
        try:
            await self._bmc_call(
                "power-hard-off", lambda bmc: bmc.request_power(PowerAction.HARD_OFF)
            )
        except StillRunning:
            log.info("%s: %s; powering the host off", self.name, what)
            return in_progress(self.settings.bmc_call_timeout)
        except BMCError as exc:
            self.session.boot = None
            log.warning("%s: %s; powering the host off failed: %s", self.name, what, exc)
            return failed(f"{what}; powering the host off failed: {exc}")
        self.session.boot = None
        self.session.power_request = PowerRequest(PowerAction.HARD_OFF, self._clock())
        log.warning("%s: %s; the host was powered off", self.name, what)
        return failed(f"{what}; the host was powered off")

    async def _power_off_quietly(self) -> None:
        """Ask for power off, ending the agent's session; a failure is only logged (the step
        reports its own error, and the next boot powers off first anyway)."""
        if not self._may_power_off:
            return
        await self._end_agent_session()
        try:
            await self._bmc_call(
                "power-hard-off", lambda bmc: bmc.request_power(PowerAction.HARD_OFF)
            )
        except (StillRunning, StepFailed, BMCError) as exc:
            log.warning("%s: powering off after the agent: %s", self.name, exc)
            return
        self.session.power_request = PowerRequest(PowerAction.HARD_OFF, self._clock())

    # --- inspection ----------------------------------------------------------------------

    def _wants_out_of_band(self, address: BMCAddress) -> bool:
        """Inspect from the BMC when the host asks for it, or when its BMC can and no agent
        can run (no boot media for its scheme, or no agent API to report to)."""
        annotations = (self.host.metadata.annotations if self.host.metadata else None) or {}
        if annotations.get(OUT_OF_BAND_ANNOTATION) == OUT_OF_BAND:
            return True
        no_agent = (
            self._boot_media_problem(address) is not None
            or not self.factory.services_or_fail().agent_api
        )
        return address.info.oob_inspection and no_agent

    async def inspect(self, *, force: bool) -> InspectionResult:
        details: list[HardwareDetails] = []

        async def step() -> Result:
            _, address = self._bmc()
            if self._wants_out_of_band(address):
                if not address.info.oob_inspection:
                    raise StepFailed(
                        f"out-of-band inspection ({OUT_OF_BAND_ANNOTATION}: {OUT_OF_BAND}) "
                        f"needs a Redfish BMC; {address.info.name} has none"
                    )
                inventory = await self._bmc_call("inventory", lambda bmc: bmc.inventory())
                boot_mac = self.host.spec.boot_mac_address if self.host.spec else None
                details.append(oob_hardware(inventory, boot_mac))
                return DONE
            agent = await self._agent(CommandName.INSPECT)
            if agent.result is not None:
                return agent.result
            try:
                details.append(
                    HardwareDetails.from_json(hardware_details_from_inventory(agent.outcome or {}))
                )
            except (InventoryError, ModelError) as exc:
                raise StepFailed(f"the agent's inventory cannot be used: {exc}") from None
            if self._may_power_off:  # inspection ends with the host off, as upstream's
                pending = await self._power(False)
                if pending is not None:
                    return pending
            return DONE

        result = await self._step("inspection", step)
        if result.complete and details:
            return InspectionResult(result, details[-1])
        return InspectionResult(result)

    # --- preparation ---------------------------------------------------------------------

    def _unsupported_settings(self, data: PrepareData) -> str | None:
        """RAID and firmware settings this provisioner cannot apply, when they ask for a
        change (a setting already recorded as applied is no change)."""
        raid, current_raid = data.raid, data.current_raid
        wants_raid = raid is not None and bool(
            raid.hardware_raid_volumes or raid.software_raid_volumes
        )
        if wants_raid and not _same(raid, current_raid):
            return "RAID configuration (spec.raid) is not supported by the direct provisioner"
        firmware, current_firmware = data.firmware, data.current_firmware
        wants_firmware = firmware is not None and any(
            v is not None for v in firmware.to_json().values()
        )
        if wants_firmware and not _same(firmware, current_firmware):
            return "firmware settings (spec.firmware) are not supported by the direct provisioner"
        return None

    def _known_disks(self) -> list[JsonObject] | None:
        """The disks inspection found (status.hardware), as the agent's inventory names
        them; None when there is nothing to check hints against: no inspection, or one that
        did not name the disks as Linux does (out of band: the BMC's names)."""
        hardware = self.host.status.hardware if self.host.status else None
        if hardware is None or hardware.storage is None:
            return None
        if not all((s.name or "").startswith("/dev/") for s in hardware.storage):
            return None
        disks = []
        for storage in hardware.storage:
            name = storage.name or ""
            kernel = next(
                (n for n in storage.alternate_names or [] if not n.startswith("/dev/disk/")), name
            )
            disks.append(
                {
                    "name": kernel,
                    "by_path": name if name.startswith("/dev/disk/by-path/") else None,
                    "size": storage.size_bytes,
                    "rotational": bool(storage.rotational),
                    "model": storage.model,
                    "vendor": storage.vendor,
                    "serial": storage.serial_number,
                    "wwn": storage.wwn,
                    "wwn_with_extension": storage.wwn_with_extension,
                    "wwn_vendor_extension": storage.wwn_vendor_extension,
                    "hctl": storage.hctl,
                }
            )
        return disks

    async def prepare(self, data: PrepareData, *, force: bool) -> Result:
        async def step() -> Result:
            unsupported = self._unsupported_settings(data)
            if unsupported is not None:
                raise StepFailed(unsupported)
            hints = data.root_device_hints.to_json() if data.root_device_hints else None
            disks = self._known_disks()
            if hints and disks is not None:
                try:
                    select_root_device(disks, hints, resolve_links=False)
                except (NoRootDeviceError, InvalidHintsError) as exc:
                    raise StepFailed(str(exc)) from None
            if not data.automated_cleaning:
                return DONE
            agent = await self._agent(CommandName.CLEAN)
            # Done, the agent stays up: an available host that is online keeps it, ready to
            # deploy at once (as Ironic's fast track); otherwise power management turns it off.
            return agent.result or DONE

        return await self._step("preparation", step)

    # --- provisioning --------------------------------------------------------------------

    async def provision(self, data: ProvisionData) -> Result:
        async def step() -> Result:
            custom = data.custom_deploy.method if data.custom_deploy else None
            if not custom and not (data.image and data.image.url):
                raise StepFailed("nothing to provision: no image and no custom deploy")
            command = CommandName.CUSTOM_DEPLOY if custom else CommandName.DEPLOY
            agent = await self._agent(command)
            if agent.result is not None:
                return agent.result
            assert agent.record is not None
            return await self._boot_from_disk(agent.record)

        return await self._step("provisioning", step)

    async def _boot_from_disk(self, record: AgentRecord) -> Result:
        """After a verified deploy: media out and the disk as the persistent boot device (one
        BMC call), then power off and on, each change polled.

        Off and on, not a reset, as Ironic reboots: a BMC may apply a new boot device only
        at a cold start. Emulators over libvirt (sushy-tools, virtualbmc) write it to the
        domain's stored definition, which a reset of the running machine does not read, so
        a reset booted the agent from the network again instead of the written image. A host
        with `disablePowerOff` gets the reset (in the same call): it must not be powered off.

        The power off request ends the agent's session first (`_end_agent_session`). After an
        operator restart, a token still held therefore means the off was not asked for yet,
        and the step starts over (at worst the boot device is set twice); none held means the
        power on is what is left.
        """
        session = self.session
        _, address = self._bmc()
        work = work_for(self._host_json(), record)
        work_id = work.id if isinstance(work, Command) else ""
        if session.finishing != work_id:
            if not record.token_hash:
                # An operator restarted after the power off was asked for (which ended the
                # agent's session): the power on is what is left.
                return await self._power(True) or DONE
            reset = not self._may_power_off
            now = self._clock()
            await self._bmc_call(
                "boot-from-disk", lambda bmc: self._boot_device_disk(bmc, address, reset=reset)
            )
            session.finishing, session.finishing_off = work_id, reset
            if reset:  # its power on is under way: wait for it, never ask for it again
                session.power_request = PowerRequest(PowerAction.ON, now)
            log.info(
                "%s: image written; booting it from the disk (%s)",
                self.name,
                "reset: power off is disabled" if reset else "off, then on",
            )
        known = None
        if not session.finishing_off:
            pending = await self._power(False)
            if pending is not None:
                return pending
            session.finishing_off = True
            known = BMCPower.OFF  # read by _power just now
        pending = await self._power(True, known=known)
        if pending is not None:
            return pending
        await self._change_record(AgentRecord.agent_gone)  # up from its disk: no agent
        session.finishing = ""
        return DONE

    async def _boot_device_disk(self, bmc: BMC, address: BMCAddress, *, reset: bool) -> None:
        """Media out (virtual-media schemes), the disk as the persistent boot device, and with
        `reset` a reset of the host (which is on: its agent just reported)."""
        if address.info.boot_method is BootMethod.VIRTUAL_MEDIA:
            await bmc.eject_media()
        await bmc.set_boot_device(BootDevice.DISK, persistent=True, uefi=self._uefi)
        if reset:
            await bmc.request_power(PowerAction.RESET)

    async def deprovision(self, *, automated_cleaning: bool) -> Result:
        async def step() -> Result:
            if automated_cleaning:
                agent = await self._agent(CommandName.CLEAN)
                if agent.result is not None:
                    return agent.result
            if self._may_power_off:
                pending = await self._power(False)
                if pending is not None:
                    return pending
            self._forget_network_boot()
            return DONE

        return await self._step("deprovisioning", step)

    # --- letting go ----------------------------------------------------------------------

    async def detach(self, *, force: bool) -> Result:
        """Drop the BMC session and timers; the host stays as it is. Without ``force``, a BMC
        call in flight (a power or boot request) is let finish first."""
        if self.session.calls.busy and not force:
            return in_progress(self.settings.poll_interval)
        self.factory.forget(self.session.uid)
        return DONE

    async def delete(self) -> Result:
        """Eject our media from a virtual-media host (best effort), then forget the host."""
        session = self.session
        address = session.address
        if session.bmc is not None and address and address.info.boot_method is VIRTUAL_MEDIA:
            try:
                await self._bmc_call("eject", lambda bmc: bmc.eject_media())
            except StillRunning:
                return in_progress(self.settings.bmc_call_timeout)
            except BMCError as exc:
                log.warning("%s: ejecting the agent's media on delete: %s", self.name, exc)
        self._forget_network_boot()
        self.factory.forget(session.uid)
        return DONE


async def _validate_and_read_power(bmc: BMC) -> BMCPower:
    """Registration's checks, as upstream's: the BMC answers to these credentials and can
    tell the power state."""
    await bmc.validate()
    return await bmc.power_state()


def _same(wanted: Model | None, current: Model | None) -> bool:
    return current is not None and wanted is not None and wanted.to_json() == current.to_json()


def _age(record: AgentRecord) -> float:
    """Seconds since the record's token was issued (0 when unknown)."""
    try:
        issued = datetime.fromisoformat(record.token_issued_at.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return max(0.0, (datetime.now(UTC) - issued).total_seconds())
