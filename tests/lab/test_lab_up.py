"""`metal3 lab up`: what it makes, checked with the system's own tools (ip, losetup, blockdev,
ipmitool) and the landed BMC drivers; and that the machine's own namespace is left alone."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from lab.helpers import Lab, root_namespace, root_namespace_sockets, run_metal3
from metal3.bmc import BMCAuthError, PowerState, connect
from metal3.bmc.credentials import Credentials
from metal3.lab.profiles import PROFILES
from metal3.lab.state import LabHost


def ip_json(*args: str) -> list[dict[str, object]]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    return list(json.loads(out or "[]"))


def test_lab_json_describes_every_host(lab: Lab) -> None:
    raw = json.loads((lab.data_dir / "lab.json").read_text())
    assert raw["version"] == 1
    assert set(raw) >= {
        "supervisor_pid",
        "network",
        "agent_api",
        "images",
        "agent_iso_url",
        "hosts",
    }
    assert os.stat(lab.data_dir / "lab.json").st_mode & 0o077 == 0  # holds passwords
    info = lab.info
    assert [(h.name, h.kind, h.registered) for h in info.hosts] == [
        ("host-0", "redfish", True),
        ("host-1", "redfish", True),
        ("host-2", "redfish-virtualmedia", True),
        ("host-3", "ipmi", True),
        ("spare-0", "redfish", False),
    ]
    subnet = ipaddress.ip_network(info.subnet)
    assert info.gateway == str(subnet.network_address + 1)
    assert info.agent_api_listen.startswith("127.0.0.1:")
    assert info.agent_api_lab_address == f"{info.gateway}:{info.agent_api_listen.rsplit(':')[1]}"
    for path in (info.ca_file, info.cert_file, info.key_file):
        assert Path(path).is_file()
    assert info.images_url.startswith(f"http://{info.gateway}:")
    assert info.images_local_url.startswith("http://127.0.0.1:")
    assert (lab.data_dir / "images" / "URL").read_text().strip() == info.images_url
    assert info.agent_iso_url == info.images_local_url + "agent.iso"
    macs = [mac for host in info.hosts for mac in host.macs]
    assert len(set(macs)) == len(macs)
    assert len({h.ip for h in info.hosts}) == len(info.hosts)
    assert {h.profile for h in info.hosts} == set(PROFILES)


def test_host_namespaces_have_the_hosts_nics(lab: Lab) -> None:
    lab_ns = [link["ifname"] for link in ip_json("-n", lab.info.namespace, "link")]
    assert "br0" in lab_ns
    for host in lab.info.hosts:
        links = {
            link["ifname"]: link for link in ip_json("-n", host.namespace, "-d", "addr", "show")
        }
        for number, mac in enumerate(host.macs):
            link = links[f"eth{number}"]
            assert link["address"] == mac
            assert link["linkinfo"]["info_kind"] == "veth"
            assert "UP" in link["flags"]
        inet = [a["local"] for a in links["eth0"]["addr_info"] if a["family"] == "inet"]
        assert inet == [host.ip]
        assert host.boot_mac == host.macs[0]


def test_disks_are_loop_devices_over_sparse_files(lab: Lab) -> None:
    listing = json.loads(
        subprocess.run(
            ["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    backing = {d["name"]: d["back-file"] for d in listing["loopdevices"]}
    for host in lab.info.hosts:
        profile = PROFILES[host.profile]
        assert len(host.disks) == len(profile.disks) == len(host.loop_devices)
        for disk, device, spec in zip(host.disks, host.loop_devices, profile.disks, strict=True):
            assert backing[device] == disk
            size = subprocess.run(
                ["blockdev", "--getsize64", device], capture_output=True, text=True, check=True
            ).stdout
            assert int(size) == spec.size
            assert os.stat(disk).st_blocks * 512 < 1 << 20  # sparse: nothing written yet
        saved = json.loads((lab.host_dir(host.name) / "profile.json").read_text())
        assert saved["name"] == host.profile


def test_recorded_tree_gives_the_profile_and_the_real_devices(lab: Lab) -> None:
    host = lab.info.host("host-1")
    done = run_metal3("agent", "inventory", "--root", str(lab.host_dir("host-1") / "sysroot"))
    assert done.returncode == 0, done.stderr
    inventory = json.loads(done.stdout)
    profile = PROFILES[host.profile]
    assert [d["name"] for d in inventory["disks"]] == list(host.loop_devices)
    assert [d["size"] for d in inventory["disks"]] == [d.size for d in profile.disks]
    assert [d["rotational"] for d in inventory["disks"]] == [d.rotational for d in profile.disks]
    assert inventory["cpu"]["count"] == profile.cpus
    assert inventory["memory"]["physical_mb"] == profile.memory_mib
    assert {i["mac_address"] for i in inventory["interfaces"]} == set(host.macs)
    eth0 = next(i for i in inventory["interfaces"] if i["name"] == "eth0")
    assert eth0["ipv4_address"] == host.ip


def test_manifests_for_registered_hosts_only(lab: Lab) -> None:
    files = sorted(p.name for p in (lab.data_dir / "manifests").glob("*.yaml"))
    assert files == ["host-0.yaml", "host-1.yaml", "host-2.yaml", "host-3.yaml"]
    for host in lab.info.hosts:
        if not host.registered:
            assert host.manifest is None
            continue
        assert host.manifest is not None
        docs = list(yaml.safe_load_all(Path(host.manifest).read_text()))
        secret = next(d for d in docs if d["kind"] == "Secret")
        bmh = next(d for d in docs if d["kind"] == "BareMetalHost")
        assert bmh["spec"]["online"] is False
        assert bmh["spec"]["bootMACAddress"] == host.boot_mac
        assert bmh["spec"]["bmc"]["address"] == host.bmc_address
        assert bmh["spec"]["bmc"]["credentialsName"] == secret["metadata"]["name"]
        decoded = subprocess.run(
            ["base64", "-d"], input=secret["data"]["password"], capture_output=True, text=True
        ).stdout
        assert decoded == host.password
        scheme = host.bmc_address.split("://", 1)[0]
        assert scheme == (host.kind if host.kind == "ipmi" else f"{host.kind}+http")


def ipmitool_power_status(host: LabHost) -> str:
    port = host.bmc_address.rsplit(":", 1)[1]
    done = subprocess.run(
        ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", port, "-U", host.username, "-E",
         "power", "status"],
        env={"IPMI_PASSWORD": host.password, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.anyio
async def test_every_bmc_answers_with_the_lab_credentials(lab: Lab) -> None:
    for host in lab.info.hosts:
        async with connect(host.bmc_address, Credentials(host.username, host.password)) as bmc:
            await bmc.validate()
            state = await bmc.power_state()
            assert state == (PowerState.ON if not host.registered else PowerState.OFF), host.name
    ipmi = lab.info.host("host-3")
    assert "Chassis Power is off" in ipmitool_power_status(ipmi)
    wrong = Credentials(ipmi.username, ipmi.password + "x")
    with pytest.raises(BMCAuthError):
        async with connect(lab.info.host("host-0").bmc_address, wrong) as bmc:
            await bmc.validate()


def test_root_namespace_untouched_and_nothing_listens_outside_loopback(lab: Lab) -> None:
    after = root_namespace()
    assert after.addr == lab.before.addr
    assert after.route == lab.before.route
    assert after.link == lab.before.link
    subnet = ipaddress.ip_network(lab.info.subnet)
    for route in after.route:
        dst = route.get("dst", "default")
        if dst != "default":
            assert not ipaddress.ip_network(dst, strict=False).overlaps(subnet), route
    pids = [lab.info.supervisor_pid]
    pids += [int(e["pid"]) for e in lab.journal if e.get("kind") == "process"]
    assert len(pids) >= 3  # the supervisor, the Redfish emulator, the IPMI simulator
    sockets = root_namespace_sockets(pids)
    assert sockets, "the lab's BMCs and servers listen somewhere"
    outside = [s for s in sockets if not s[2].startswith("127.0.0.1:")]
    assert outside == []
    # The hosts' side (image server, relay) listens on the gateway inside the lab namespace.
    ss = subprocess.run(
        ["ip", "netns", "exec", lab.info.namespace, "ss", "-ltnH"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"{lab.info.agent_api_lab_address}" in ss
    assert lab.info.images_url.removeprefix("http://").rstrip("/") in ss
