"""What a host's agent should do now: a pure function of the host and its agent record.

Level-triggered: the answer is computed from the host's current state every time it is asked,
so an operator restart loses nothing. `RULES` is the one table from provisioning state to
work; the rest is bookkeeping that is the same for every state:

- work the state asks for gets a command id derived from the host's uid and the identity of
  the operation (for a deploy: when provisioning started, the image URL, checksum, checksum
  type and format), so the same work has the same id before and after a restart;
- once a result is recorded for that id, the answer is ``wait`` (the operator moves the host
  on): work is never asked twice, and a failed result is final for its id. A retry is new
  work with a new id: inspecting and cleaning count ``status.errorCount`` in their identity
  (a failure raises it, so the retry after it is asked anew, also of an agent that kept the
  failed outcome); a deploy is retried through a new provisioning (a new start time). The
  deploy's identity leaves the error count out on purpose: a BMC hiccup in the middle of a
  deploy must not make it new work, or the image would be written twice;
- the terminal commands (``power_off``, ``reboot_to_disk``) end the agent's session: their
  ids include the token's id, so each agent boot is told once, and acknowledging one
  rotates the token.

Power is the provisioner's: it boots the agent, powers the host off and boots it from its
disk through the BMC (`metal3.provisioner.direct`). A terminal command only tells the agent
its session is over; with ``--power-action system`` the agent also powers off or reboots the
machine itself, which the BMC's later request then finds done. The provisioner finds the
result of the work it waits for with :func:`work_for`, the same rule the agent is asked by.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from metal3.agentapi.records import AgentRecord

JsonObject = dict[str, Any]

PAUSED_ANNOTATION = "baremetalhost.metal3.io/paused"


class CommandName(StrEnum):
    INSPECT = "inspect"
    CLEAN = "clean"
    DEPLOY = "deploy"
    CUSTOM_DEPLOY = "custom_deploy"
    WAIT = "wait"
    POWER_OFF = "power_off"
    REBOOT_TO_DISK = "reboot_to_disk"


TERMINAL: frozenset[str] = frozenset({CommandName.POWER_OFF, CommandName.REBOOT_TO_DISK})
# Commands whose results are recorded (every one but wait).
RESULT_COMMANDS: frozenset[str] = frozenset(CommandName) - {CommandName.WAIT}
ID_DIGITS = 24
COMMAND_ID = re.compile(
    r"^(?P<command>" + "|".join(sorted(CommandName)) + rf")-[0-9a-f]{{{ID_DIGITS}}}$"
)


def command_of(command_id: str) -> str | None:
    """The command an id was issued for (ids start with it), or None for a malformed id."""
    match = COMMAND_ID.match(command_id)
    return match.group("command") if match else None


@dataclass(frozen=True)
class Command:
    id: str
    name: str
    args: JsonObject = field(default_factory=dict)

    def to_json(self) -> JsonObject:
        return {"id": self.id, "command": self.name, "args": self.args}


@dataclass(frozen=True)
class Work:
    """What a state asks of the agent: the command, the operation's identity, its arguments."""

    name: str
    identity: tuple[str, ...]
    args: JsonObject = field(default_factory=dict)


class Host:
    """Read access to the fields of a BareMetalHost (JSON) that decide the command."""

    def __init__(self, obj: JsonObject) -> None:
        self.obj = obj
        self.metadata: JsonObject = obj.get("metadata") or {}
        self.spec: JsonObject = obj.get("spec") or {}
        self.status: JsonObject = obj.get("status") or {}

    @property
    def uid(self) -> str:
        return str(self.metadata.get("uid") or "")

    @property
    def state(self) -> str:
        return str((self.status.get("provisioning") or {}).get("state") or "")

    def history(self, operation: str, edge: str = "start") -> str:
        entry = (self.status.get("operationHistory") or {}).get(operation) or {}
        return str(entry.get(edge) or "")

    @property
    def error_count(self) -> str:
        return str(self.status.get("errorCount") or 0)

    @property
    def epoch(self) -> str:
        """The latest start or end in operationHistory: when the host last changed course."""
        stamps = [
            str(entry.get(edge))
            for entry in (self.status.get("operationHistory") or {}).values()
            if isinstance(entry, dict)
            for edge in ("start", "end")
            if entry.get(edge)
        ]
        return max(stamps, default="")

    @property
    def cleaning(self) -> bool:
        return bool(self.spec.get("automatedCleaningMode") != "disabled")

    @property
    def hints(self) -> JsonObject | None:
        hints = self.spec.get("rootDeviceHints")
        return dict(hints) if isinstance(hints, dict) and hints else None

    @property
    def may_power_off(self) -> bool:
        return not self.spec.get("disablePowerOff")

    @property
    def paused(self) -> bool:
        return PAUSED_ANNOTATION in (self.metadata.get("annotations") or {})

    @property
    def detached(self) -> bool:
        return self.status.get("operationalStatus") == "detached"

    def identity(self) -> JsonObject:
        return {
            "uuid": self.uid,
            "namespace": self.metadata.get("namespace") or "",
            "name": self.metadata.get("name") or "",
        }


def _canonical(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


# --- the table -----------------------------------------------------------------------------
# Each rule returns the work its state asks of the agent, or why there is none (a wait reason).


def _inspecting(host: Host) -> Work | str:
    return Work(CommandName.INSPECT, (host.history("inspect"), host.error_count))


def _clean_args(host: Host) -> JsonObject:
    return {"mode": "metadata", "rootDeviceHints": host.hints}


def _preparing(host: Host) -> Work | str:
    if not host.cleaning:
        return "automated cleaning is disabled; the operator is preparing the host"
    provisioning = host.status.get("provisioning") or {}
    settings = {
        "wanted": {k: host.spec.get(k) for k in ("raid", "rootDeviceHints", "firmware")},
        "applied": {k: provisioning.get(k) for k in ("raid", "rootDeviceHints", "firmware")},
    }
    return Work(
        CommandName.CLEAN,
        ("preparing", host.epoch, _canonical(settings), host.error_count),
        _clean_args(host),
    )


def _deprovisioning(host: Host) -> Work | str:
    if not host.cleaning:
        return "automated cleaning is disabled; the operator is deprovisioning the host"
    return Work(
        CommandName.CLEAN,
        ("deprovisioning", host.history("deprovision"), host.error_count),
        _clean_args(host),
    )


def _provisioning(host: Host) -> Work | str:
    started = host.history("provision")
    image = host.spec.get("image") if isinstance(host.spec.get("image"), dict) else None
    image_args = (
        {k: image.get(k) for k in ("url", "checksum", "checksumType", "format")} if image else None
    )
    method = (host.spec.get("customDeploy") or {}).get("method")
    if method:
        return Work(
            CommandName.CUSTOM_DEPLOY,
            (started, method, _canonical(image_args)),
            {"method": method, "image": image_args, "host": host.identity()},
        )
    if not image_args or not image_args.get("url"):
        return "no image to deploy"
    return Work(
        CommandName.DEPLOY,
        (
            started,
            *(str(image_args.get(k) or "") for k in ("url", "checksum", "checksumType", "format")),
        ),
        {
            "image": image_args,
            "rootDeviceHints": host.hints,
            "configDrive": None,  # filled by the API from the host's Secrets
            "host": host.identity(),
        },
    )


def _provisioned(host: Host) -> Work | str:
    return Work(CommandName.REBOOT_TO_DISK, ("provisioned", host.epoch))


def _available(host: Host) -> Work | str:
    if host.spec.get("online") or not host.may_power_off:
        # As Ironic's fast track: a host kept on waits in the agent, ready to deploy at once.
        return "available; staying ready for provisioning"
    return Work(CommandName.POWER_OFF, ("available", host.epoch))


def _leaving(host: Host) -> Work | str:
    if not host.may_power_off:
        return "the host is being deleted; power off is disabled for it"
    return Work(CommandName.POWER_OFF, (host.state, host.epoch))


RULES: dict[str, Callable[[Host], Work | str]] = {
    "inspecting": _inspecting,
    "preparing": _preparing,
    "provisioning": _provisioning,
    "deprovisioning": _deprovisioning,
    "provisioned": _provisioned,
    "available": _available,
    "ready": _available,
    "powering off before delete": _leaving,
    "deleting": _leaving,
}
"""Provisioning state -> the agent's work there. States not listed ask nothing (``wait``):
registering, match profile, externally provisioned, unmanaged, servicing, none."""


# --- the bookkeeping -----------------------------------------------------------------------


def command_id(name: str, *parts: str) -> str:
    digest = hashlib.sha256(_canonical([name, *parts]).encode()).hexdigest()
    return f"{name}-{digest[:ID_DIGITS]}"


def wait(host: Host, reason: str) -> Command:
    return Command(
        command_id(CommandName.WAIT, host.uid, host.state, host.epoch, reason),
        CommandName.WAIT,
        {"reason": reason},
    )


def work_for(obj: JsonObject, record: AgentRecord) -> Command | str:
    """The work the host's state asks of its agent, with its id, whether or not it is done
    already; or why there is none. `plan` asks the agent for it; the provisioner looks its
    result up by the same id."""
    host = Host(obj)
    if host.paused:
        return "the host is paused"
    if host.detached:
        return "the host is detached"
    rule = RULES.get(host.state)
    if rule is None:
        return f"nothing for the agent while the host is {host.state or 'new'}"
    work = rule(host)
    if isinstance(work, str):
        return work
    parts = (host.uid, *work.identity)
    if work.name in TERMINAL:
        parts = (*parts, record.token_id)
    return Command(command_id(work.name, *parts), work.name, work.args)


def plan(obj: JsonObject, record: AgentRecord) -> Command:
    """The command for the host ``obj`` (a BareMetalHost as JSON) given its agent record."""
    work = work_for(obj, record)
    if isinstance(work, str):
        return wait(Host(obj), work)
    done = record.results.get(work.id)
    if done is not None:
        return wait(Host(obj), f"{work.name} {done.status}; waiting for the operator")
    return work
