"""The lab's supervisor: the one process that makes the lab, keeps its hosts behaving, and
takes it all down again (`python -m metal3.lab.supervisor --data-dir DIR`, started by
`metal3 lab up`).

Setup, in this order (namespaces and disks are journalled before they are made, processes
once started; see `metal3.lab.resources`): host plans, the network (lab namespace, bridge,
host namespaces, veths), disks (sparse files on loop devices), the agent API's TLS files, the
image server (both listeners) and the agent ISO, the notification listener, the agent API
relay, the BMCs, each host's recorded tree, the manifests; then hosts whose BMC starts powered
on boot, and `lab.json` is written last. A VM lab (`--vms`, see `metal3.lab.vmlab`) makes no
host namespaces, loop devices or recorded trees: after the relay come its libvirt daemons,
domains and BMCs, then the manifests. Any failure on the way removes everything made so
far; so does SIGTERM or SIGINT later.

At run time the main thread runs an asyncio loop that owns every host (`metal3.lab.hosts`):
BMC notifications arrive on a listener thread and are handed to it, agent processes are
started from it (so the kernel kills them with this process: their parent-death signal
follows the thread that started them) and their exits are seen through pidfds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metal3.bmc.emulators import FakeDrive
from metal3.lab import cpu, disks, network
from metal3.lab.agents import AGENT_NICE, AgentSpec
from metal3.lab.bmcs import (
    BmcPlan,
    LabBmcs,
    PendingPower,
    ipmi_report,
    poll_redfish_power,
    redfish_report,
)
from metal3.lab.config import HostPlan, LabConfig, plan_hosts
from metal3.lab.hosts import BmcReport, Host
from metal3.lab.images import ImageServer, agent_cmdline, make_agent_iso
from metal3.lab.layout import LabPaths
from metal3.lab.manifests import write_host_manifest
from metal3.lab.relay import Relay
from metal3.lab.resources import Journal, teardown
from metal3.lab.state import LabHost, LabInfo, write_json
from metal3.lab.sysroot import TreeDisk, TreeNic, write_tree
from metal3.lab.vmlab import VmLab
from metal3.tls import TLSFiles, make_tls_files

log = logging.getLogger("metal3.lab")

LOCALHOST = "127.0.0.1"
BMC_USER = "lab-admin"
POLL_RETRY = 0.1  # seconds between reads of a Redfish system whose power change is not due yet
POLL_ATTEMPTS = 100


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


class _NotifyServer(http.server.HTTPServer):
    """BMC notifications on 127.0.0.1, one at a time (in the order the BMCs send them)."""

    def __init__(self, supervisor: Supervisor) -> None:
        super().__init__((LOCALHOST, 0), _NotifyHandler)
        self.supervisor = supervisor


class _NotifyHandler(http.server.BaseHTTPRequestHandler):
    server: _NotifyServer
    timeout = 10  # seconds: a sender that stalls mid-request must not hold the listener

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("notify: " + format, *args)

    def _read(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self) -> None:
        body = self._read()
        if self.path != "/redfish" or body is None:
            self._answer(400)
            return
        self.server.supervisor.post(self.server.supervisor.on_redfish, body)
        self._answer(204)

    def do_POST(self) -> None:
        body = self._read()
        name = self.path.removeprefix("/ipmi/")
        if not self.path.startswith("/ipmi/") or body is None:
            self._answer(400)
            return
        self.server.supervisor.post(self.server.supervisor.on_ipmi, name, body)
        self._answer(204)


class Supervisor:
    def __init__(self, data_dir: Path, config: LabConfig) -> None:
        self.data_dir = data_dir.resolve()
        self.paths = LabPaths(self.data_dir)
        self.config = config
        self.journal = Journal(self.paths.journal)
        self.lab_id = secrets.token_hex(3)
        self.loop = asyncio.new_event_loop()
        self.plans: list[HostPlan] = []
        self.hosts: dict[str, Host] = {}
        self.by_uuid: dict[str, str] = {}
        self.lab_hosts: list[LabHost] = []
        self.bmcs: LabBmcs | None = None
        self.images: ImageServer | None = None
        self.relay: Relay | None = None
        self.notify: _NotifyServer | None = None
        self.notify_thread: threading.Thread | None = None
        self.info: LabInfo | None = None
        self.stopping = asyncio.Event()
        self.redfish_password = ""
        self.polls: dict[str, int] = {}  # system uuid -> reads left for its pending change
        self._agent_iso_sha = ""
        self.vm_lab: VmLab | None = None  # `--vms`: the VMs, their libvirt and BMCs
        self.cpu_group: Path | None = None  # the hosts' CPU group (`metal3.lab.cpu`)
        self.cpu_note = ""

    # --- setup ---------------------------------------------------------------------------

    def setup(self) -> None:
        started = time.monotonic()
        self._fresh_folders()
        prefix = f"m3lab-{self.lab_id}"
        self.journal.add("lab", lab_id=self.lab_id, prefix=prefix, pid=os.getpid())
        self.plans = plan_hosts(self.config)
        lab_net = network.LabNetwork(prefix, network.choose_subnet(network.root_networks()))
        vm_lab = self.config.vms > 0
        links = [
            network.HostLink(
                namespace=f"{prefix}-{plan.name}",
                nics=tuple(zip(plan.nic_names(), plan.macs(), strict=True)),
                ip=lab_net.host_ip(plan.index),
                port_prefix=f"h{plan.index}n",
            )
            for plan in self.plans
            if not vm_lab
        ]
        for ns in [prefix, *(link.namespace for link in links)]:
            self.journal.add("netns", name=ns)
        network.create_lab_namespace(lab_net)
        network.create_host_namespaces(lab_net, links)
        log.info("network %s in %s: %d hosts", lab_net.subnet, prefix, len(links))
        loop_devices = {} if vm_lab else self._disks()
        tls = self._agent_api_tls(lab_net.gateway)
        agent_port = _free_port()
        image_port = self._image_server(lab_net, agent_port, tls.ca_cert.read_bytes())
        self._notify_server()
        assert self.notify is not None
        notify_url = f"http://{LOCALHOST}:{self.notify.server_address[1]}"
        relay_socket = network.listening_socket(
            lab_net.gateway, agent_port, namespace=lab_net.namespace
        )
        self.relay = Relay(relay_socket, (LOCALHOST, agent_port)).start()
        api_url = f"https://{lab_net.gateway}:{agent_port}"
        if vm_lab:
            self._vms(lab_net)
            assert self.vm_lab is not None
            redfish_url = self.vm_lab.redfish_url
            if self.config.ramdisk:
                boot_url = self.vm_lab.start_boot_server(
                    Path(self.config.ramdisk), api_url, tls.ca_cert, self.journal.process
                )
                log.info("boot server at %s serving %s", boot_url, self.config.ramdisk)
                self.vm_lab.write_agent_iso(
                    Path(self.config.ramdisk),
                    f"{agent_cmdline(api_url, tls.ca_cert.read_bytes())} console=ttyS0",
                    self.paths.agent_iso,
                )
        else:
            self._cpu_group(prefix)
            self._bmcs(notify_url)
            assert self.bmcs is not None
            redfish_url = self.bmcs.redfish_url
            cmdline = agent_cmdline(api_url, tls.ca_cert.read_bytes())
            iso_sha = self._agent_iso_sha
            for plan, link in zip(self.plans, links, strict=True):
                loops = loop_devices[plan.name]
                self._host(plan, link, loops, api_url, cmdline, iso_sha, tls.ca_cert)
        self.info = LabInfo(
            lab_id=self.lab_id,
            supervisor_pid=os.getpid(),
            namespace=lab_net.namespace,
            subnet=str(lab_net.subnet),
            gateway=lab_net.gateway,
            agent_api_listen=f"{LOCALHOST}:{agent_port}",
            agent_api_lab_address=f"{lab_net.gateway}:{agent_port}",
            ca_file=str(tls.ca_cert),
            cert_file=str(tls.cert),
            key_file=str(tls.key),
            images_dir=str(self.paths.images),
            images_url=f"http://{lab_net.gateway}:{image_port}/",
            images_local_url=f"http://{LOCALHOST}:{image_port}/",
            agent_iso_url=f"http://{LOCALHOST}:{image_port}/agent.iso",
            redfish_url=redfish_url,
            notify_url=notify_url,
            hosts=tuple(self.lab_hosts),
            libvirt_uri=self.vm_lab.uri if self.vm_lab else "",
            hosts_cpu_group=str(self.cpu_group or ""),
            hosts_cpu_note=self.cpu_note,
        )
        log.info("lab %s set up in %.2f s", self.lab_id, time.monotonic() - started)

    def _fresh_folders(self) -> None:
        """A new lab starts from empty host, BMC and manifest folders (images stay)."""
        for folder in (
            self.paths.hosts,
            self.paths.bmc,
            self.paths.manifests,
            self.paths.agent_api,
        ):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        self.paths.images.mkdir(parents=True, exist_ok=True)
        self.paths.access_log.unlink(missing_ok=True)

    def _disks(self) -> dict[str, list[tuple[str, Path, int]]]:
        made: dict[str, list[tuple[str, Path, int]]] = {}
        for plan in self.plans:
            folder = self.paths.host(plan.name)
            folder.root.mkdir(parents=True, exist_ok=True)
            write_json(folder.profile, plan.profile.to_json())
            made[plan.name] = []
            for index, spec in enumerate(plan.profile.disks):
                backing = folder.disk(index)
                self.journal.add("disk", path=str(backing))
                disks.make_sparse(backing, spec.size)
                made[plan.name].append((disks.attach(backing), backing, spec.size))
        return made

    def _cpu_group(self, name: str) -> None:
        """The hosts' CPU group, or the note why there is none (see `metal3.lab.cpu`)."""
        try:
            path = cpu.group_path(name)
            self.journal.add("cpu_group", path=str(path))
            self.cpu_group = cpu.create_group(path)
        except cpu.CpuGroupError as exc:
            self.cpu_note = (
                f"no CPU group for the hosts ({exc}): their agents run at nice "
                f"{AGENT_NICE} beside the operator"
            )
            log.warning("%s", self.cpu_note)
        else:
            log.info("hosts' CPU group: %s", self.cpu_group)

    def _agent_api_tls(self, gateway: str) -> TLSFiles:
        folder = self.paths.agent_api
        folder.mkdir(parents=True, exist_ok=True)
        return make_tls_files(
            TLSFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key"),
            [gateway, LOCALHOST, "localhost"],
            ca_common_name=f"metal3 lab {self.lab_id} agent API CA",
            server_common_name=gateway,
            days=30,
        )

    def _image_server(self, lab_net: network.LabNetwork, agent_port: int, ca_pem: bytes) -> int:
        local = network.listening_socket(LOCALHOST, 0)
        port: int = local.getsockname()[1]
        try:
            inside = network.listening_socket(lab_net.gateway, port, namespace=lab_net.namespace)
        except BaseException:
            local.close()
            raise
        self._agent_iso_sha = make_agent_iso(
            self.paths.agent_iso,
            api_url=f"https://{lab_net.gateway}:{agent_port}",
            ca_pem=ca_pem,
        )
        self.images = ImageServer(self.paths.images, self.paths.access_log)
        self.images.serve("lab", inside)
        self.images.serve("local", local)
        self.paths.images_url.write_text(f"http://{lab_net.gateway}:{port}/\n")
        return port

    def _vms(self, lab_net: network.LabNetwork) -> None:
        """The VM lab: libvirt daemons in the lab namespace, domains, BMCs, manifests."""
        self.vm_lab = VmLab(self.paths, lab_net)
        self.lab_hosts = self.vm_lab.start(self.plans, self.journal.process)
        for host in self.lab_hosts:
            if host.manifest is not None:
                write_host_manifest(Path(host.manifest), host, self.config.namespace)

    def _notify_server(self) -> None:
        self.notify = _NotifyServer(self)
        self.notify_thread = threading.Thread(
            target=self.notify.serve_forever, kwargs={"poll_interval": 0.2}, name="notify"
        )
        self.notify_thread.daemon = True
        self.notify_thread.start()

    def _bmcs(self, notify_url: str) -> None:
        self.redfish_password = secrets.token_urlsafe(12)
        plans = []
        for plan in self.plans:
            ipmi = plan.kind == "ipmi"
            plans.append(
                BmcPlan(
                    name=plan.name,
                    kind=plan.kind,
                    system_uuid=plan.system_uuid,
                    username=BMC_USER,
                    password=secrets.token_urlsafe(12) if ipmi else self.redfish_password,
                    nics=tuple((mac, "") for mac in plan.macs()),
                    drives=tuple(
                        FakeDrive(
                            id=f"{plan.name}-disk{i}",
                            name=spec.model,
                            capacity_bytes=spec.size,
                            protocol=spec.redfish_protocol,
                        )
                        for i, spec in enumerate(plan.profile.disks)
                    ),
                    power_on=not plan.registered,
                    boot_device=None if plan.registered else "Pxe",
                )
            )
            self.by_uuid[plan.system_uuid] = plan.name
        self.bmcs = LabBmcs(self.paths.bmc, plans, notify_url, self.config.power_delay)
        try:
            self.bmcs.start()
        finally:
            for what, pid in self.bmcs.processes():
                self.journal.process(what, pid)

    def _host(
        self,
        plan: HostPlan,
        link: network.HostLink,
        loops: list[tuple[str, Path, int]],
        api_url: str,
        cmdline: str,
        iso_sha: str,
        ca_file: Path,
    ) -> None:
        assert self.bmcs is not None
        folder = self.paths.host(plan.name)
        write_tree(
            folder.sysroot,
            host=plan.name,
            system_uuid=plan.system_uuid,
            profile=plan.profile,
            disks=[TreeDisk(dev, size, backing) for dev, backing, size in loops],
            nics=[TreeNic(n, m) for n, m in zip(plan.nic_names(), plan.macs(), strict=True)],
            ip_addr_json=network.record_ip_addr(link.namespace),
        )
        bmc_plan = self.bmcs.plans[plan.name]
        manifest = self.paths.manifests / f"{plan.name}.yaml" if plan.registered else None
        lab_host = LabHost(
            name=plan.name,
            namespace=link.namespace,
            kind=plan.kind,
            bmc_address=self.bmcs.address(plan.name),
            username=bmc_plan.username,
            password=bmc_plan.password,
            boot_mac=plan.macs()[0],
            macs=plan.macs(),
            ip=link.ip,
            profile=plan.profile.name,
            disks=tuple(str(backing) for _, backing, _ in loops),
            loop_devices=tuple(dev for dev, _, _ in loops),
            registered=plan.registered,
            manifest=str(manifest) if manifest else None,
        )
        self.lab_hosts.append(lab_host)
        if manifest is not None:
            write_host_manifest(manifest, lab_host, self.config.namespace)
        self.hosts[plan.name] = Host(
            name=plan.name,
            paths=folder,
            agent=AgentSpec(
                namespace=link.namespace,
                api_url=api_url,
                ca_file=ca_file,
                state_dir=folder.agent_state,
                root=folder.sysroot,
                macs=plan.macs(),
                log_path=folder.agent_log,
                cpu_group=self.cpu_group,
            ),
            disks=lab_host.loop_devices,
            boot_mac=lab_host.boot_mac,
            agent_cmdline=cmdline,
            agent_iso_sha256=iso_sha,
            loop=self.loop,
            power_off_lag=self.config.power_off_lag,
        )

    # --- run -----------------------------------------------------------------------------

    def post(self, callback: Any, *args: Any) -> None:
        """Run `callback(*args)` on the loop (from any thread)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: the lab is going away
            self.loop.call_soon_threadsafe(callback, *args)

    def on_redfish(self, system: dict[str, Any]) -> None:
        uuid, report, pending = redfish_report(system)
        name = self.by_uuid.get(uuid)
        if name is None:
            log.warning("notification for an unknown Redfish system %s", uuid)
            return
        self.hosts[name].on_report(report)
        if pending is not None:
            self.polls[uuid] = POLL_ATTEMPTS
            delay = max(0.0, pending.apply_time - time.time()) + 0.01
            self.loop.call_later(delay, self._poll, uuid, name, pending)
        else:
            self.polls.pop(uuid, None)  # applied (a change due at once, or someone's read)

    def _poll(self, uuid: str, name: str, pending: PendingPower) -> None:
        """Read the system so the fake driver applies its due power change (and notifies);
        nothing once a report said it is applied."""
        assert self.bmcs is not None
        if self.polls.get(uuid, 0) <= 0:
            return
        plan = self.bmcs.plans[name]
        url = self.bmcs.redfish_url_of(name)

        def read() -> str:
            return poll_redfish_power(url, uuid, plan.username, plan.password)

        def done(future: asyncio.Future[str]) -> None:
            try:
                state = future.result()
            except Exception as exc:
                log.warning("%s: reading its Redfish system failed: %s", name, exc)
                state = ""
            want = "On" if "On" in pending.state or "Restart" in pending.state else "Off"
            left = self.polls.get(uuid, 0) - 1
            self.polls[uuid] = left
            if state != want and left > 0 and not self.stopping.is_set():
                self.loop.call_later(POLL_RETRY, self._poll, uuid, name, pending)

        self.loop.run_in_executor(None, read).add_done_callback(done)

    def on_ipmi(self, name: str, body: dict[str, Any]) -> None:
        host = self.hosts.get(name)
        if host is None:
            log.warning("notification for an unknown IPMI host %s", name)
            return
        host.on_report(ipmi_report(body))

    async def serve(self) -> None:
        """Boot the hosts that start powered on, write lab.json, run until told to stop."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self.stopping.set)
        assert self.info is not None
        bmcs = self.bmcs.plans if self.bmcs is not None else {}  # a VM lab has none of these
        for plan in self.plans:
            bmc = bmcs.get(plan.name)
            if bmc is not None and bmc.power_on:
                self.hosts[plan.name].on_report(
                    BmcReport(power="on", boot_device="pxe", event="powered on at lab start")
                )
        write_json(self.paths.lab_json, self.info.to_json(), private=True)
        log.info("lab %s ready: %s", self.lab_id, self.paths.lab_json)
        await self.stopping.wait()
        log.info("stopping")

    # --- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything this process runs, then remove what the journal lists."""
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                host.stop()
        for stop in (
            self.vm_lab.stop if self.vm_lab else None,
            self.bmcs.stop if self.bmcs else None,
            self.relay.stop if self.relay else None,
            self.images.stop if self.images else None,
        ):
            if stop is not None:
                try:
                    stop()
                except Exception:
                    log.exception("stopping a lab part failed")
        if self.notify is not None:
            self.notify.shutdown()
            self.notify.server_close()
        report = teardown(self.data_dir)
        for error in report.errors:
            log.error("teardown: %s", error)
        log.info(
            "removed %d namespaces, %d loop devices",
            len(report.namespaces),
            len(report.loop_devices),
        )


def run(data_dir: Path, config: LabConfig) -> int:
    supervisor = Supervisor(data_dir, config)
    try:
        supervisor.setup()
        supervisor.loop.run_until_complete(supervisor.serve())
    except Exception:
        log.exception("the lab failed")
        return 1
    except KeyboardInterrupt:
        log.info("interrupted during setup")
        return 1
    finally:
        with contextlib.suppress(Exception):
            supervisor.loop.run_until_complete(asyncio.sleep(0))
        supervisor.close()
        supervisor.loop.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metal3.lab.supervisor")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # SIGTERM before the loop runs (during setup) must still clean up: make it an exception.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    paths = LabPaths(args.data_dir)
    try:
        config = LabConfig.from_json(json.loads(paths.config.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        log.error("cannot read %s: %s", paths.config, exc)
        return 2
    return run(args.data_dir, config)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
