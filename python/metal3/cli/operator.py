"""`metal3 operator`: the BareMetalHost operator against any Kubernetes API server.

Declaring the options imports no controller or Kubernetes client: `--concurrency` and
`--provisioning-limit` default to None on the command line and the operator's own defaults
apply when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metal3.provisioner import PROVISIONERS

if TYPE_CHECKING:
    import anyio

    from metal3.agentapi.ratelimit import RateLimit
    from metal3.agentapi.server import AgentApiOptions
    from metal3.discovery.service import DiscoveryOptions
    from metal3.operator import OperatorOptions
    from metal3.provisioner.direct.lab import LabConfig
    from metal3.provisioner.direct.settings import DirectSettings


def add_operator_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `operator` and `standalone`."""
    parser.add_argument("--namespace", help="watch only this namespace (default: all)")
    parser.add_argument(
        "--provisioner",
        choices=PROVISIONERS,
        default=PROVISIONERS[0],
        help="what does the hardware work: direct (default): the hosts' BMCs and the metal3 "
        "agent booted on them; fixture: simulated hardware in memory (tests, demos)",
    )
    parser.add_argument(
        "--lab",
        type=Path,
        metavar="DIR",
        help="drive the hosts of the lab `metal3 lab up --data-dir DIR` runs: the agent API "
        "(address, TLS) and the agent's boot media come from DIR/lab.json (not with "
        "--agent-listen or the --agent-*-url options)",
    )
    parser.add_argument(
        "--agent-iso-url",
        metavar="URL",
        help="the agent as an ISO, for hosts booting it by virtual media (the *-virtualmedia "
        "BMC schemes): their BMCs download it from this URL",
    )
    parser.add_argument(
        "--agent-kernel-url",
        metavar="URL",
        help="where your network boot server (DHCP + PXE/iPXE) serves the agent's kernel to "
        "hosts that boot it from the network (ipmi, redfish, idrac-redfish, ilo5-redfish): with "
        "--agent-initramfs-url it turns network boot of the agent on; metal3 hands the URL to "
        "no server, so yours must serve it (or see --boot-server-dir)",
    )
    parser.add_argument(
        "--agent-initramfs-url",
        metavar="URL",
        help="the agent's initramfs, for network boot (see --agent-kernel-url)",
    )
    parser.add_argument(
        "--boot-server-dir",
        type=Path,
        metavar="DIR",
        help="network boot of the agent through `metal3 bootserver --state-dir DIR` (a folder "
        "both share): each network-boot host's bootMACAddress is allowed there before its "
        "agent boots and forgotten when the agent is done; turns network boot on",
    )
    parser.add_argument(
        "--agent-timeout",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="how long the agent has, from its boot, to report its work; past it the host "
        "is powered off and the step fails (default: 1800)",
    )
    parser.add_argument(
        "--soft-power-off-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long a soft power off may take before the host is powered off hard "
        "(default: 600, as upstream's Ironic)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="reconcile workers (default: min(cores, 8), at least 2)",
    )
    parser.add_argument(
        "--provisioning-limit",
        type=int,
        default=None,
        help="hosts inspecting, provisioning or deprovisioning at once",
    )
    parser.add_argument(
        "--health-addr",
        default="127.0.0.1:8081",
        help="HOST:PORT serving /healthz, /readyz and /metrics",
    )
    parser.add_argument("--grace-period", type=float, default=30.0, help="seconds for shutdown")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--agent-listen",
        metavar="HOST:PORT",
        help="serve the agent API (HTTPS) the hosts' agents dial into (default: not served; "
        "TLS from --agent-cert/--agent-key, or for standalone generated in DATA_DIR/agent-tls)",
    )
    parser.add_argument(
        "--agent-rate-limit",
        type=float,
        default=20.0,
        metavar="PER_SECOND",
        help="agent API requests per second per client address, sustained (default: 20; "
        "0: no limit)",
    )
    parser.add_argument(
        "--agent-burst",
        type=int,
        default=40,
        help="agent API requests per client address at once (default: 40)",
    )
    parser.add_argument(
        "--discovery",
        action="store_true",
        help="discover unknown hosts: an agent whose lookup matches no host sends its "
        "inventory and becomes a BareMetalHost (no credentials, operationalStatus "
        "discovered); needs the agent API (--agent-listen or --lab)",
    )
    parser.add_argument(
        "--discovery-namespace",
        metavar="NAMESPACE",
        help="where discovered hosts are created (default: --namespace, else default)",
    )
    parser.add_argument(
        "--discovery-per-minute",
        type=int,
        default=10,
        metavar="N",
        help="new systems discovery admits per minute, at most; lookups of more get 429 "
        "with Retry-After (default: 10)",
    )
    parser.add_argument(
        "--discovery-configmap",
        metavar="NAMESPACE/NAME",
        help="discovery's settings from this ConfigMap, watched (data keys enabled: "
        "true|false, namespace, perMinute), over the --discovery* options; needs the agent API",
    )


def direct_settings(args: argparse.Namespace, lab: LabConfig | None = None) -> DirectSettings:
    """The direct provisioner's settings from the options (the lab's boot media with
    ``lab``); raises ValueError when they do not fit together."""
    from metal3.provisioner.direct.settings import AgentBootMedia, DirectSettings

    urls = ("agent_iso_url", "agent_kernel_url", "agent_initramfs_url")
    given = [name for name in urls if getattr(args, name)]
    if lab is not None and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"--lab takes the agent's boot media from the lab; drop {flags}")
    if bool(args.agent_kernel_url) != bool(args.agent_initramfs_url):
        raise ValueError("--agent-kernel-url and --agent-initramfs-url go together")
    for name in ("agent_timeout", "soft_power_off_timeout"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive number of seconds")
    boot_server_dir = getattr(args, "boot_server_dir", None)
    if lab is not None and boot_server_dir is not None:
        raise ValueError("--lab boots the lab's hosts itself; drop --boot-server-dir")
    media = lab.boot_media if lab is not None else AgentBootMedia(
        iso_url=args.agent_iso_url,
        kernel_url=args.agent_kernel_url,
        initramfs_url=args.agent_initramfs_url,
        network_boot_server=f"metal3 bootserver ({boot_server_dir})" if boot_server_dir else None,
    )  # fmt: skip
    return DirectSettings(
        boot_server_dir=boot_server_dir,
        media=media,
        agent_timeout=args.agent_timeout,
        soft_power_off_timeout=args.soft_power_off_timeout,
    )


def load_lab(args: argparse.Namespace) -> LabConfig | None:
    """The lab `--lab DIR` names (None without it); raises ValueError saying what is wrong."""
    if args.lab is None:
        return None
    from metal3.provisioner.direct.lab import LabConfig

    if args.provisioner != "direct":
        raise ValueError("--lab drives the lab's hosts with the direct provisioner")
    if args.agent_listen is not None:
        raise ValueError("--lab serves the agent API where the lab says; drop --agent-listen")
    return LabConfig.load(args.lab)


def lab_agent_api(lab: LabConfig, args: argparse.Namespace) -> AgentApiOptions:
    """The agent API as the lab's hosts expect it: its listen address and TLS files."""
    from metal3.agentapi.server import AgentApiOptions

    return AgentApiOptions(
        listen=lab.agent_listen,
        cert_file=lab.cert_file,
        key_file=lab.key_file,
        ca_file=lab.ca_file,
        rate_limit=agent_rate_limit(args),
    )


def discovery_options(args: argparse.Namespace) -> DiscoveryOptions | None:
    """Discovery's options from `--discovery*` (None: off); raises ValueError when they do
    not fit."""
    from metal3.discovery.configmap import parse_reference
    from metal3.discovery.service import DiscoveryOptions

    if args.discovery_configmap is not None:
        parse_reference(args.discovery_configmap)
        if args.agent_listen is None and args.lab is None:
            raise ValueError(
                "--discovery-configmap needs the agent API: give --agent-listen (or --lab)"
            )
    if not args.discovery:
        if args.discovery_namespace is not None:
            raise ValueError("--discovery-namespace needs --discovery")
        return None
    if args.agent_listen is None and args.lab is None:
        raise ValueError("--discovery needs the agent API: give --agent-listen (or --lab)")
    if args.discovery_per_minute < 1:
        raise ValueError("--discovery-per-minute must be at least 1")
    namespace = args.discovery_namespace or args.namespace or "default"
    if args.namespace is not None and namespace != args.namespace:
        raise ValueError(
            f"--discovery-namespace {namespace} is not watched (--namespace {args.namespace})"
        )
    return DiscoveryOptions(namespace=namespace, hosts_per_minute=args.discovery_per_minute)


def options_from(
    args: argparse.Namespace, lab: LabConfig | None = None, **extra: Any
) -> OperatorOptions:
    from metal3.controllers.baremetalhost import Settings
    from metal3.operator import OperatorOptions, default_concurrency

    concurrency = default_concurrency() if args.concurrency is None else args.concurrency
    settings = Settings()
    if args.provisioning_limit is not None:
        settings = Settings(provisioning_limit=args.provisioning_limit)
    return OperatorOptions(
        namespace=args.namespace,
        provisioner=args.provisioner,
        concurrency=max(1, concurrency),
        health_address=args.health_addr,
        grace_period=args.grace_period,
        settings=settings,
        direct=direct_settings(args, lab),
        discovery=discovery_options(args),
        discovery_configmap=args.discovery_configmap,
        **extra,
    )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube)")
    parser.add_argument("--leader-elect", action="store_true", help="hold a Lease before acting")
    parser.add_argument(
        "--leader-election-namespace", default="default", help="namespace of the Lease"
    )
    parser.add_argument(
        "--fixture-state", type=Path, help="file keeping the fixture provisioner's hardware"
    )
    parser.add_argument(
        "--agent-cert",
        type=Path,
        help="PEM certificate (chain) of the agent API (with --agent-listen)",
    )
    parser.add_argument(
        "--agent-key", type=Path, help="PEM private key of the agent API (with --agent-listen)"
    )
    add_operator_arguments(parser)
    parser.set_defaults(func=run)


async def stop_on_signals(stop: anyio.Event, scope: anyio.CancelScope) -> None:
    """First SIGINT/SIGTERM: graceful stop; second: cancel everything."""
    import anyio

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if stop.is_set():
                scope.cancel()
                return
            logging.getLogger("metal3").info("stopping (again to force)")
            stop.set()


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def agent_rate_limit(args: argparse.Namespace) -> RateLimit:
    from metal3.agentapi.ratelimit import RateLimit

    return RateLimit(rate=args.agent_rate_limit, burst=args.agent_burst)


def agent_api_options(args: argparse.Namespace) -> AgentApiOptions | None:
    """The agent API's options from `--agent-*`; raises ValueError when they do not fit."""
    from metal3.agentapi.server import AgentApiOptions, parse_listen

    if args.agent_listen is None:
        if args.agent_cert or args.agent_key:
            raise ValueError("--agent-cert and --agent-key need --agent-listen")
        return None
    parse_listen(args.agent_listen)
    if args.agent_cert is None or args.agent_key is None:
        raise ValueError("--agent-listen needs --agent-cert and --agent-key (the API is HTTPS)")
    for path in (args.agent_cert, args.agent_key):
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
    return AgentApiOptions(
        listen=args.agent_listen,
        cert_file=args.agent_cert,
        key_file=args.agent_key,
        rate_limit=agent_rate_limit(args),
    )


def run(args: argparse.Namespace) -> int:
    import anyio

    from metal3.operator import Operator

    configure_logging(args.log_level)
    try:
        lab = load_lab(args)
        if lab is not None and (args.agent_cert or args.agent_key):
            raise ValueError("--lab serves the agent API with the lab's TLS files")
        agent_api = lab_agent_api(lab, args) if lab is not None else agent_api_options(args)
        options = options_from(
            args,
            lab,
            kubeconfig=args.kubeconfig,
            leader_elect=args.leader_elect,
            leader_election_namespace=args.leader_election_namespace,
            fixture_state=args.fixture_state,
            agent_api=agent_api,
        )
    except ValueError as exc:
        print(f"metal3 operator: error: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_on_signals, stop, tg.cancel_scope)
            await Operator(options).run(stop)
            tg.cancel_scope.cancel()

    anyio.run(main)
    return 0
