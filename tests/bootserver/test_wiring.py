"""The boot server's wiring: the operator's --boot-server-dir, the direct provisioner's use of
the registry, and deploy/bootserver.yaml's arguments as `metal3 bootserver` parses them."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

from metal3.api.baremetalhost import BareMetalHost
from metal3.bmc.address import parse_address
from metal3.bootserver.registry import BootServer
from metal3.cli import build_parser
from metal3.cli.operator import direct_settings
from metal3.provisioner.direct.factory import DirectProvisionerFactory

REPO = Path(__file__).resolve().parents[2]
MAC = "52:54:00:aa:00:01"


def _operator_args(*argv: str) -> argparse.Namespace:
    return build_parser(("operator",)).parse_args(["operator", *argv])


def test_operator_boot_server_dir_turns_network_boot_on(tmp_path: Path) -> None:
    settings = direct_settings(_operator_args("--boot-server-dir", str(tmp_path)))
    assert settings.boot_server_dir == tmp_path
    assert settings.media.network_boot
    assert direct_settings(_operator_args()).boot_server_dir is None
    assert not direct_settings(_operator_args()).media.network_boot


def test_direct_provisioner_allows_then_forgets_the_boot_mac(tmp_path: Path) -> None:
    factory = DirectProvisionerFactory(
        direct_settings(_operator_args("--boot-server-dir", str(tmp_path)))
    )
    host = BareMetalHost.from_json(
        {
            "apiVersion": "metal3.io/v1alpha1",
            "kind": "BareMetalHost",
            "metadata": {"name": "h0", "namespace": "ns", "uid": "u-1"},
            "spec": {"bootMACAddress": MAC.upper(), "bmc": {"address": "ipmi://192.0.2.9"}},
        }
    )
    provisioner = factory.for_host(host)
    assert provisioner._boot_media_problem(parse_address("ipmi://192.0.2.9")) is None
    registry = BootServer(tmp_path)
    provisioner._allow_network_boot()
    assert list(registry.allowed()) == [MAC]
    assert registry.allowed()[MAC].name == "ns/h0"
    provisioner._forget_network_boot()
    assert registry.allowed() == {}
    factory.ipmi_pool.close()


def test_manifest_arguments_parse() -> None:
    docs = list(yaml.safe_load_all((REPO / "deploy" / "bootserver.yaml").read_text()))
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    [container] = spec["containers"]
    args = [
        re.sub(r"\$\((\w+)\)", lambda m: str(config[m.group(1)]), arg) for arg in container["args"]
    ]
    parsed = build_parser(("bootserver",)).parse_args(args)
    assert parsed.interface == config["PROVISIONING_INTERFACE"]
    assert parsed.listen == config["PROVISIONING_ADDRESS"]
    assert parsed.dhcp_range == config["DHCP_RANGE"]
    assert parsed.unknown_hosts == config["UNKNOWN_HOSTS"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {str(parsed.state_dir), str(parsed.ramdisk), str(parsed.agent_ca_file.parent)} <= mounts
    assert "NET_RAW" in container["securityContext"]["capabilities"]["add"]
