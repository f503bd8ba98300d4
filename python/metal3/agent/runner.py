"""The agent's main loop: look the host up, ask what to do, do it, report it; again.

One command at a time. What must survive a restart of the agent process is kept in the state
directory (``agent-state.json``, owner-only): the host's token, and the outcome of every
command done, so that

- a result is reported until the operator acknowledges it (an operator restart, a lost
  answer: it is sent again, and recorded once);
- a command the operator asks for again after it was done (an operator that lost the result)
  is reported again, never run twice.

Calls that fail for want of an operator (no answer, 5xx, 429) are retried with backoff,
honouring Retry-After. Neither the token nor the config drive's contents are ever logged.

``power_off`` and ``reboot_to_disk`` end the session: the agent acknowledges them, then with
``power_action="system"`` powers the host off or reboots it, or with ``"exit"`` (the default:
the agent never powers off the machine it runs on unless told to) just exits.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson

from metal3.agent.client import AgentApiError, AgentClient, Lookup, retrying
from metal3.agent.errors import AgentError

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]
T = TypeVar("T")

STATE_FILE = "agent-state.json"
KEPT_OUTCOMES = 32
TERMINAL = ("power_off", "reboot_to_disk")
POWER_ACTIONS = ("exit", "system")
MIN_POLL_INTERVAL = 0.5  # seconds between two command requests, however quick the answer
# Seconds between deploy progress reports. Each costs the operator a request and a read of the
# host's agent record: while fifty lab hosts wrote, the operator used 0.27 of a core with
# reports every 2 s, 0.21-0.23 with every 10 s (the 50-host bench).
PROGRESS_INTERVAL = 10.0


class SessionEndedError(AgentError):
    """The operator ended this agent's session (410): the host is being powered off, and the
    work from here on belongs to the agent it boots next."""


class TokenUnavailableError(AgentError):
    """The operator holds a token for this host that this agent does not have."""


# --- what survives a restart -------------------------------------------------------------


@dataclass
class Outcome:
    """A command's outcome, kept until the operator acknowledged it (and a while after)."""

    command: str
    status: str  # succeeded | failed
    result: JsonObject | None = None
    error: str | None = None
    acknowledged: bool = False


@dataclass
class AgentState:
    host_uid: str = ""
    token: str = ""
    outcomes: dict[str, Outcome] = field(default_factory=dict)  # by command id, oldest first

    @classmethod
    def load(cls, folder: Path) -> AgentState:
        path = folder / STATE_FILE
        try:
            raw = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return cls()
        except (OSError, orjson.JSONDecodeError) as exc:
            raise AgentError(f"cannot read the agent's state {path}: {exc}") from exc
        try:
            outcomes = {key: Outcome(**value) for key, value in (raw["outcomes"] or {}).items()}
            return cls(str(raw["host_uid"]), str(raw["token"]), outcomes)
        except (KeyError, TypeError, AttributeError) as exc:
            raise AgentError(f"cannot read the agent's state {path}: unexpected content") from exc

    def save(self, folder: Path) -> None:
        """Write atomically, readable by the owner only (it holds the token)."""
        while len(self.outcomes) > KEPT_OUTCOMES:
            oldest = next(iter(self.outcomes))
            if not self.outcomes[oldest].acknowledged:
                break
            del self.outcomes[oldest]
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = orjson.dumps(
            {
                "host_uid": self.host_uid,
                "token": self.token,
                "outcomes": {k: asdict(v) for k, v in self.outcomes.items()},
            }
        )
        tmp = folder / (STATE_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, folder / STATE_FILE)


# --- the host's identity -----------------------------------------------------------------


def local_macs(sysfs: Path = Path("/sys/class/net")) -> list[str]:
    """The MAC addresses of this machine's network interfaces (loopback and zero MACs left out)."""
    found: set[str] = set()
    for iface in sorted(sysfs.iterdir()) if sysfs.is_dir() else []:
        with contextlib.suppress(OSError):
            mac = (iface / "address").read_text().strip().lower()
            if len(mac) == 17 and mac != "00:00:00:00:00:00":
                found.add(mac)
    return sorted(found)


def _dmi(name: str) -> str | None:
    """An SMBIOS string of the machine the inventory describes (its root, see below)."""
    with contextlib.suppress(OSError):
        value = Path(_inventory_root, "sys/class/dmi/id", name).read_text().strip()
        return value or None
    return None


@dataclass(frozen=True)
class BootSettings:
    """Where the operator is and which CA to trust, as given on the kernel command line."""

    api_url: str | None = None
    ca_file: str | None = None
    ca_data: str | None = None  # PEM text


def settings_from_cmdline(cmdline: str) -> BootSettings:
    """``metal3.agent_api=URL`` and ``metal3.agent_ca_file=PATH`` or ``metal3.agent_ca=B64``
    (the CA's PEM, base64-encoded) from a kernel command line (/proc/cmdline)."""
    values: dict[str, str] = {}
    for word in cmdline.split():
        key, sep, value = word.partition("=")
        if sep and key in ("metal3.agent_api", "metal3.agent_ca_file", "metal3.agent_ca"):
            values[key] = value
    ca_data = None
    if "metal3.agent_ca" in values:
        try:
            ca_data = base64.b64decode(values["metal3.agent_ca"], validate=True).decode()
        except (ValueError, UnicodeDecodeError) as exc:
            raise AgentError("metal3.agent_ca on the kernel command line is not base64") from exc
    return BootSettings(values.get("metal3.agent_api"), values.get("metal3.agent_ca_file"), ca_data)


# --- running commands --------------------------------------------------------------------


# Where the inventory is read from: / on a real host; a recorded procfs/sysfs tree where the
# machine's own would describe something else (the lab's emulated hosts). One per process.
_inventory_root = Path("/")


def set_inventory_root(root: Path) -> None:
    global _inventory_root
    _inventory_root = root


_work_nice: int | None = None


def set_work_nice(nice: int | None) -> None:
    """The nice value of the disk work (cleaning, image writes: see `at_nice`)."""
    global _work_nice
    _work_nice = nice


def _inventory() -> JsonObject:
    from metal3.agent.inventory import collect_inventory

    return collect_inventory(_inventory_root)


def _disks() -> list[JsonObject]:
    disks = _inventory().get("disks") or []
    return [d for d in disks if isinstance(d, dict)]


def run_inspect(args: JsonObject) -> JsonObject:
    return _inventory()


def run_clean(args: JsonObject) -> JsonObject:
    """Metadata cleaning of the disk the root device hints choose, or without hints of every
    disk (skipping, and reporting, the ones in use)."""
    from metal3.agent.blockdev import DiskInUseError
    from metal3.agent.clean import clean_disk
    from metal3.agent.hints import select_root_device

    started = time.monotonic()
    mode = str(args.get("mode") or "metadata")
    hints = args.get("rootDeviceHints")
    disks = _disks()
    chosen = [select_root_device(disks, hints)] if hints else disks
    cleaned: list[JsonObject] = []
    skipped: list[JsonObject] = []
    for disk in chosen:
        try:
            cleaned.append(
                at_nice(_work_nice, partial(clean_disk, str(disk["name"]), mode)).to_json()
            )
        except DiskInUseError as exc:
            if hints:
                raise
            skipped.append({"device": exc.device, "reasons": exc.reasons})
    return {
        "mode": mode,
        "disks": cleaned,
        "skipped": skipped,
        "seconds": round(time.monotonic() - started, 3),
    }


def run_deploy(args: JsonObject, progress: DeployProgress | None = None) -> JsonObject:
    """Write the image and the config drive to the disk the root device hints choose."""
    from metal3.agent.deploy import DeployRequest, HostIdentity, deploy
    from metal3.agent.hints import select_root_device

    image = args.get("image") or {}
    drive = args.get("configDrive") or {}
    host = args.get("host") or {}
    disk = select_root_device(_disks(), args.get("rootDeviceHints"))
    user_data = drive.get("userData")
    request = DeployRequest(
        image_url=str(image.get("url") or ""),
        checksum=str(image.get("checksum") or ""),
        checksum_type=image.get("checksumType"),
        image_format=image.get("format"),
        disk=str(disk["name"]),
        user_data=base64.b64decode(user_data) if user_data else None,
        network_data=drive.get("networkData"),
        meta_data=drive.get("metaData"),
        host=HostIdentity(
            uuid=str(host.get("uuid") or ""),
            namespace=str(host.get("namespace") or ""),
            name=str(host.get("name") or ""),
        ),
    )
    log.info("deploying to %s", disk["name"])
    callback = progress.update if progress else None
    result = at_nice(_work_nice, lambda: deploy(request, progress=callback))
    return {**result.to_json(), "rootDevice": disk}


class DeployProgress:
    """Reports a deploy's bytes written every `PROGRESS_INTERVAL`, from its own thread and
    connection, so a slow or absent operator never holds up the write (best effort)."""

    def __init__(self, client: AgentClient, uid: str, token: str, command_id: str) -> None:
        self._client = client
        self._call = (uid, token, command_id)
        self._written = -1
        self._sent = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send_loop, name="deploy-progress", daemon=True)

    def update(self, downloaded: int, written: int, total: int | None) -> object:
        self._written = written
        return None

    def __enter__(self) -> DeployProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._client.close()

    def _send_loop(self) -> None:
        self._send("started")
        while not self._stop.wait(PROGRESS_INTERVAL):
            written = self._written
            if written == self._sent or written < 0:
                continue
            if self._send("write", written):
                self._sent = written

    def _send(self, phase: str, done_bytes: int | None = None) -> bool:
        """One report, best effort: True if the operator took it."""
        uid, token, command_id = self._call
        try:
            self._client.progress(uid, token, command_id, phase, done_bytes=done_bytes)
        except AgentApiError as exc:
            log.debug("progress of %s not sent: %s", command_id, exc.message)
            return False
        return True


def run_custom_deploy(args: JsonObject) -> JsonObject:
    raise AgentError(f"custom deploy method {args.get('method')!r} is not supported by this agent")


Handler = Callable[[JsonObject], JsonObject]
HANDLERS: dict[str, Handler] = {
    "inspect": run_inspect,
    "clean": run_clean,
    "deploy": run_deploy,
    "custom_deploy": run_custom_deploy,
}
"""The commands the agent runs, by name (power_off and reboot_to_disk are the loop's own)."""


def execute(name: str, args: JsonObject, handlers: dict[str, Handler] = HANDLERS) -> Outcome:
    """Run one command; every failure becomes a failed outcome with a clear message."""
    handler = handlers.get(name)
    if handler is None:
        return Outcome(name, "failed", error=f"this agent does not know the command {name!r}")
    try:
        return Outcome(name, "succeeded", handler(args))
    except AgentError as exc:
        log.error("%s failed: %s", name, exc)
        return Outcome(name, "failed", error=str(exc))
    except Exception as exc:
        log.exception("%s failed", name)
        return Outcome(name, "failed", error=f"internal error: {type(exc).__name__}: {exc}")


def at_nice(nice: int | None, work: Callable[[], T]) -> T:
    """Run `work` (a disk's cleaning, an image's write) in a thread of its own at the nice
    value `nice` (None: here, as is). The threads it starts (imagestream's reader, hasher
    and writer) inherit it, and everything else the agent does (lookups, reports, the
    inventory and root device choice) keeps the process's priority: on a machine whose CPUs
    the agent shares (the lab's hosts share one machine's), those then come before the
    hashing of images. Linux gives each thread its own nice value."""
    if nice is None:
        return work()
    done: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError as exc:  # (lowering it needs CAP_SYS_NICE): the work runs anyway
            log.warning("cannot set the work's nice value to %d: %s", nice, exc)
        try:
            done.append((True, work()))
        except BaseException as exc:
            done.append((False, exc))

    # A daemon: an interrupted agent (Ctrl-C) exits without waiting for the write to end.
    thread = threading.Thread(target=run, name="agent-work", daemon=True)
    thread.start()
    thread.join()
    ok, value = done[0]
    if not ok:
        raise value
    result: T = value
    return result


def power(action: str) -> int:
    """Power the machine off (``power_off``) or reboot it (``reboot_to_disk``: the boot device
    is the provisioner's to set, as in Ironic)."""
    verb = "poweroff" if action == "power_off" else "reboot"
    argv = ["systemctl", verb] if shutil.which("systemctl") else [verb]
    log.info("%s: running %s", action, " ".join(argv))
    done = subprocess.run(argv, check=False)
    return 0 if done.returncode == 0 else 1


# --- the loop ----------------------------------------------------------------------------


@dataclass
class RunnerOptions:
    api_url: str
    state_dir: Path
    ca_file: str | Path | None = None
    ca_data: str | None = None
    macs: Sequence[str] | None = None  # None: this machine's
    system_uuid: str | None = None  # None: from DMI when readable
    serial_number: str | None = None
    max_commands: int | None = None  # stop after this many commands done (tests)
    power_action: str = "exit"
    lookup_interval: float = 10.0  # between lookups that found no host
    inventory_root: Path = Path("/")  # a recorded tree instead of this machine's procfs/sysfs
    work_nice: int | None = None  # the disk work's nice value (`at_nice`; None: the process's)
    handlers: dict[str, Handler] = field(default_factory=lambda: dict(HANDLERS))


class Runner:
    def __init__(self, options: RunnerOptions) -> None:
        if options.power_action not in POWER_ACTIONS:
            raise AgentError(f"power action must be one of {POWER_ACTIONS}")
        self.options = options
        set_inventory_root(options.inventory_root)
        set_work_nice(options.work_nice)
        self.state = AgentState.load(options.state_dir)
        self.client = AgentClient(options.api_url, ca_file=options.ca_file, ca_data=options.ca_data)
        self.macs = list(options.macs) if options.macs else local_macs()
        if not self.macs:
            raise AgentError("no MAC address to look the host up by")
        self.poll_seconds = 30.0
        self.commands_done = 0
        # Whether the token in use came from a lookup of this run, not from the state: one
        # kept from an earlier run may belong to an earlier boot's session (see _authorized).
        self.token_received = False
        # The operator has this machine's inventory from discovery (or already knew the
        # system): its lookups are refused until the host is registered and the operator
        # boots the agent itself, so a refusal (403) means "not yet", not "give up".
        self.discovered = False

    def _save(self) -> None:
        self.state.save(self.options.state_dir)

    # --- lookup and token ------------------------------------------------------------

    def identify(self, *, refused: bool = False) -> None:
        """Look the host up until it is found and a usable token is known.

        ``refused``: the token we hold was just refused, so a saved one is no use.
        """
        reported = False
        while True:
            try:
                # Whether a usable token is kept: "no" while one is held for this boot tells
                # the operator the lookup answer carrying it was lost (it boots us again).
                found = self._lookup(has_token=bool(self.state.token) and not refused)
            except AgentApiError as exc:
                if exc.status in (400, 404, 409) or (self.discovered and exc.status == 403):
                    if not reported:
                        log.warning(
                            "lookup by %s: %s; looking up again every %.0f s",
                            ", ".join(self.macs),
                            exc.message,
                            self.options.lookup_interval,
                        )
                        reported = True
                    time.sleep(self.options.lookup_interval)
                    continue
                raise
            self.poll_seconds = found.poll_seconds
            if found.discovery_token is not None:
                self._discovered(found.discovery_token)
                time.sleep(self.options.lookup_interval)
                continue
            if found.uid != self.state.host_uid:
                self.state.token = ""
            self.state.host_uid = found.uid
            if found.token:
                self.state.token = found.token
                self.token_received = True
                self._save()
                log.info("host %s/%s: token received", found.namespace, found.name)
                return
            if self.state.token and not refused:
                log.info(
                    "host %s/%s: using the token kept in the state", found.namespace, found.name
                )
                return
            log.error(
                "host %s/%s: the operator holds a token this agent does not have; waiting for "
                "it to be rotated (the host's agent must be restarted by the operator)",
                found.namespace,
                found.name,
            )
            self._save()
            refused = True  # the token kept (if any) is no use: say so at the next lookup
            time.sleep(self.options.lookup_interval)

    def _discovered(self, discovery_token: str) -> None:
        """The operator does not know this machine and discovers it: send the inventory
        (once per discovery token), then go on looking up until the host is registered."""
        try:
            answer = retrying(
                lambda: self.client.send_inventory(discovery_token, _inventory()),
                "discovery inventory",
            )
        except AgentApiError as exc:
            if exc.status in (401, 403):  # replaced or expired meanwhile: look up again
                log.warning("discovery: %s; looking up again", exc.message)
                return
            if exc.status not in (400, 409):
                raise
            # 409: a host describes this system already; 400: the inventory was refused
            # (logged by the operator too). Either way: wait for the operator.
            log.warning("discovery: inventory not taken: %s", exc)
        else:
            host = answer.get("host") or {}
            log.info(
                "discovery: the operator %s host %s/%s from this machine's inventory",
                "created" if answer.get("created") else "already has",
                host.get("namespace"),
                host.get("name"),
            )
        self.discovered = True
        log.info(
            "discovery: looking up every %.0f s until the host is registered and booted into "
            "the agent by the operator",
            self.options.lookup_interval,
        )

    def _lookup(self, *, has_token: bool) -> Lookup:
        options = self.options
        return retrying(
            lambda: self.client.lookup(
                self.macs,
                system_uuid=options.system_uuid or _dmi("product_uuid"),
                serial_number=options.serial_number or _dmi("product_serial"),
                has_token=has_token,
            ),
            "lookup",
        )

    def _authorized(self, call: Callable[[str, str], T], what: str) -> T:
        """``call(uid, token)``, retried while the operator is away, looked up again when
        the token is refused (401: none held any more; 403: not ours; 410 for a token kept
        from an earlier run: its session is over). A 410 for the token this run received
        ends the run (`SessionEndedError`)."""
        while True:
            try:
                return retrying(lambda: call(self.state.host_uid, self.state.token), what)
            except AgentApiError as exc:
                if exc.status == 410:
                    if self.token_received:
                        raise SessionEndedError(exc.message) from None
                    # The token kept in the state is an earlier session's (a state folder
                    # that outlived its boot), and this boot's token, if the operator issued
                    # one, never reached us: drop the old one and say so at the lookup, so
                    # that the operator boots the host again rather than wait for us.
                    log.warning("%s: the token kept in the state is over; dropping it", what)
                    self.state.token = ""
                    self._save()
                elif exc.status in (401, 403):
                    log.warning("%s: %s; looking the host up again", what, exc.message)
                else:
                    raise
                self.identify(refused=True)

    # --- results ---------------------------------------------------------------------

    def report(self) -> None:
        """Send every outcome not acknowledged yet, until it is."""
        for command_id, outcome in list(self.state.outcomes.items()):
            if outcome.acknowledged:
                continue
            try:
                recorded = self._post(command_id, outcome)
            except AgentApiError as exc:
                if exc.status not in (400, 413) or outcome.status == "failed":
                    raise
                # The operator cannot take this result (too large, malformed): report the
                # command failed, saying why, rather than nothing.
                log.error("result of %s refused: %s; reporting a failure", command_id, exc)
                outcome.status, outcome.result = "failed", None
                outcome.error = f"the operator refused the result: {exc.message}"
                self._save()
                recorded = self._post(command_id, outcome)
            outcome.acknowledged = True
            self._save()
            log.info(
                "%s %s: %s",
                command_id,
                outcome.status,
                "recorded" if recorded else "already recorded",
            )

    def _post(self, command_id: str, outcome: Outcome) -> bool:
        def post(uid: str, token: str) -> bool:
            return self.client.post_result(
                uid, token, command_id, outcome.status, outcome.result, outcome.error
            )

        return self._authorized(post, f"result of {command_id}")

    def _progress(self, command_id: str, phase: str) -> None:
        """Best effort: progress is a hint, never worth a retry or a failure."""
        try:
            self.client.progress(self.state.host_uid, self.state.token, command_id, phase)
        except AgentApiError as exc:
            log.debug("progress of %s not sent: %s", command_id, exc.message)

    # --- the loop --------------------------------------------------------------------

    def run(self) -> int:
        """Until a terminal command (or ``max_commands``, or the operator ending the session);
        returns the exit code."""
        try:
            return self._run()
        except SessionEndedError as exc:
            log.info("the operator ended this agent's session (%s); exiting", exc)
            return 0

    def _run(self) -> int:
        self.identify()
        self.report()
        repeated = ""
        while True:
            asked = time.monotonic()
            command = self._authorized(self._ask, "command")
            command_id = str(command.get("id", ""))
            name = str(command.get("command", ""))
            args = command.get("args") or {}
            if name == "wait":
                log.debug("waiting: %s", args.get("reason", ""))
                time.sleep(max(0.0, MIN_POLL_INTERVAL - (time.monotonic() - asked)))
                continue
            done = self.state.outcomes.get(command_id)
            if done is not None:
                # Asked again for work already done: the operator lost the result. Report it
                # again; never run it twice.
                log.warning("%s was already done; reporting its result again", command_id)
                done.acknowledged = False
                self._save()
                self.report()
                if repeated == command_id:
                    time.sleep(self.poll_seconds)
                repeated = command_id
                continue
            log.info("running %s %s", name, command_id)
            if name in TERMINAL:
                return self._leave(command_id, name)
            outcome = self._execute(command_id, name, args)
            self.state.outcomes[command_id] = outcome
            self._save()
            self.report()
            self.commands_done += 1
            limit = self.options.max_commands
            if limit is not None and self.commands_done >= limit:
                return 0

    def _ask(self, uid: str, token: str) -> JsonObject:
        return self.client.command(uid, token, wait=self.poll_seconds)

    def _execute(self, command_id: str, name: str, args: JsonObject) -> Outcome:
        """Run a command, its start told to the operator first; a deploy's from the thread
        that reports its progress, so that the write does not wait for the answer."""
        handler = self.options.handlers.get(name)
        if handler is not run_deploy:
            self._progress(command_id, "started")
            return execute(name, args, self.options.handlers)
        progress_client = AgentClient(
            self.options.api_url, ca_file=self.options.ca_file, ca_data=self.options.ca_data,
            timeout=5.0,
        )  # fmt: skip
        with DeployProgress(
            progress_client, self.state.host_uid, self.state.token, command_id
        ) as p:
            return execute(name, args, {name: lambda a: run_deploy(a, p)})

    def _leave(self, command_id: str, name: str) -> int:
        """Acknowledge a terminal command (the operator rotates the token), then act on it."""
        how = self.options.power_action
        self.state.outcomes[command_id] = Outcome(name, "succeeded", {"action": name, "how": how})
        self._save()
        self.report()
        self.commands_done += 1
        if how == "system":
            return power(name)
        log.info("%s acknowledged; exiting (power action 'exit')", name)
        return 0


def run_agent(
    api_url: str,
    ca_file: str | Path | None,
    state_dir: Path,
    **options: Any,
) -> int:
    """Run the agent against the operator at ``api_url`` (https), trusting ``ca_file``;
    keyword options are `RunnerOptions` fields. Returns the process exit code."""
    return Runner(
        RunnerOptions(api_url=api_url, ca_file=ca_file, state_dir=state_dir, **options)
    ).run()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m metal3.agent.runner ARGS` is `metal3 agent run ARGS` (options there)."""
    from metal3.cli import main as metal3_main

    return metal3_main(["agent", "run", *(sys.argv[1:] if argv is None else argv)])


def run_from_command_line(
    *,
    api: str | None,
    ca_file: str | None,
    state_dir: Path,
    macs: Sequence[str] | None,
    max_commands: int | None,
    power_action: str,
    inventory_root: Path,
    work_nice: int | None = None,
) -> int:
    """`metal3 agent run`: what the options leave out comes from the kernel command line
    (metal3.agent_api, metal3.agent_ca_file or metal3.agent_ca), as in a ramdisk."""
    try:
        boot = BootSettings()
        if api is None or ca_file is None:
            with contextlib.suppress(OSError):
                boot = settings_from_cmdline(Path("/proc/cmdline").read_text())
        api_url = api or boot.api_url
        if not api_url:
            raise AgentError("no agent API: give --api (or metal3.agent_api= at boot)")
        return run_agent(
            api_url,
            ca_file or boot.ca_file,
            state_dir,
            ca_data=None if ca_file or boot.ca_file else boot.ca_data,
            macs=macs,
            max_commands=max_commands,
            power_action=power_action,
            inventory_root=inventory_root,
            work_nice=work_nice,
        )
    except AgentError as exc:
        print(f"metal3 agent: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
