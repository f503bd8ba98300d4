"""`metal3 bootserver` on a provisioning network of namespaces (see bootnet.py), with real
clients: busybox udhcpc as BIOS PXE, UEFI PXE and iPXE clients, curl for TFTP and HTTP.

Asserted: an allowed MAC gets an address from the range and the boot file its firmware needs
(undionly.kpxe / snponly.efi over TFTP from the server's address, the chain script's URL for
iPXE), then its own iPXE script naming the kernel, the initramfs and the agent API; a MAC
nobody allowed gets no answer (or, as configured, an address without a boot file, or the
discovery boot); forgetting a MAC stops its boot without a restart; TFTP serves the iPXE
binaries byte for byte; and nothing answers or listens outside the provisioning network."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootserver.bootnet import (
    HTTP_PORT,
    BootNet,
    ServerProcess,
    boot_network,
    dhcp,
    in_ns,
    start_server,
)
from metal3.bootserver.registry import BootServer, BootServerError, normalize_mac

AGENT_API = "https://10.255.0.1:9443"
CA_PEM = b"-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n"
ALLOWED = "52:54:00:12:34:56"
UNKNOWN = "52:54:00:ab:cd:ef"


@pytest.fixture
def ramdisk(tmp_path: Path) -> Path:
    folder = tmp_path / "ramdisk"
    folder.mkdir()
    (folder / "vmlinuz").write_bytes(b"kernel " * 1000)
    (folder / "initramfs.img").write_bytes(bytes(range(256)) * 4096)
    return folder


@pytest.fixture
def net() -> Iterator[BootNet]:
    with boot_network() as made:
        yield made


def _server(net: BootNet, tmp_path: Path, ramdisk: Path, *extra: str) -> ServerProcess:
    ca = tmp_path / "ca.pem"
    tmp_path.mkdir(parents=True, exist_ok=True)
    ca.write_bytes(CA_PEM)
    return start_server(
        net,
        tmp_path,
        ramdisk=ramdisk,
        agent_api=AGENT_API,
        extra=["--agent-ca-file", str(ca), *extra],
    )


def _wait_reloaded(server: ServerProcess, mac: str, present: bool) -> None:
    """Until the server has written the registry into dnsmasq's hosts file (and signalled)."""
    import time

    hosts = server.state / "dnsmasq.hosts"
    deadline = time.monotonic() + 30
    while (mac in (hosts.read_text() if hosts.exists() else "")) != present:
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.1)
    time.sleep(0.3)  # dnsmasq re-reads the file on SIGHUP


def _curl(net: BootNet, namespace: str, url: str, out: Path) -> subprocess.CompletedProcess[str]:
    return in_ns(namespace, ["curl", "-sS", "--max-time", "20", "-o", str(out), url])


def test_allowed_mac_boots_unknown_mac_gets_nothing(
    net: BootNet, tmp_path: Path, ramdisk: Path
) -> None:
    server = _server(net, tmp_path, ramdisk)
    try:
        allowed = net.add_client(ALLOWED)
        unknown = net.add_client(UNKNOWN)
        registry = BootServer(server.state)
        registry.allow(ALLOWED.upper(), name="host-0", kernel_args="metal3.debug=1")
        _wait_reloaded(server, ALLOWED, present=True)

        first, last = (int(a.rsplit(".", 1)[1]) for a in net.dhcp_range())
        boots = {}
        for kind in ("bios-pxe", "uefi-pxe", "ipxe", "linux"):
            lease = dhcp(allowed, tmp_path / kind, kind)
            assert lease is not None, f"{kind}: no lease\n{server.log_text()[-3000:]}"
            assert lease["ip"].rsplit(".", 1)[0] == net.address.rsplit(".", 1)[0]
            assert first <= int(lease["ip"].rsplit(".", 1)[1]) <= last
            assert lease["serverid"] == net.address
            assert "router" not in lease and "dns" not in lease
            boots[kind] = (lease.get("siaddr"), lease["boot"])
        assert boots["bios-pxe"] == (net.address, "undionly.kpxe")
        assert boots["uefi-pxe"] == (net.address, "snponly.efi")
        chain_url = f"http://{net.address}:{HTTP_PORT}/boot.ipxe"
        assert boots["ipxe"][1] == chain_url
        assert boots["linux"][1] == ""  # the agent's own DHCP: an address, nothing to boot

        # The chain script, then this MAC's own script, over HTTP from the client.
        chain = tmp_path / "boot.ipxe"
        assert _curl(net, allowed, chain_url, chain).returncode == 0
        text = chain.read_text()
        assert text.startswith("#!ipxe\n")
        assert f"http://{net.address}:{HTTP_PORT}/boot/${{netX/mac:hexhyp}}.ipxe" in text
        script = tmp_path / "host.ipxe"
        url = f"http://{net.address}:{HTTP_PORT}/boot/{ALLOWED.replace(':', '-')}.ipxe"
        assert _curl(net, allowed, url, script).returncode == 0
        lines = script.read_text().splitlines()
        [kernel] = [line for line in lines if line.startswith("kernel ")]
        [initrd] = [line for line in lines if line.startswith("initrd ")]
        assert kernel.split()[1] == f"http://{net.address}:{HTTP_PORT}/vmlinuz"
        args = kernel.split(" || ")[0].split()[2:]
        ca = base64.b64encode(CA_PEM).decode()
        assert args == [
            "initrd=initramfs.img", "console=ttyS0", f"metal3.agent_api={AGENT_API}",
            f"metal3.agent_ca={ca}", "metal3.debug=1",
        ]  # fmt: skip
        assert initrd.split()[1] == f"http://{net.address}:{HTTP_PORT}/initramfs.img"
        assert "boot || goto failed" in lines
        for name in ("vmlinuz", "initramfs.img"):
            got = tmp_path / f"got-{name}"
            url = f"http://{net.address}:{HTTP_PORT}/{name}"
            assert _curl(net, allowed, url, got).returncode == 0
            assert got.read_bytes() == (ramdisk / name).read_bytes()

        # Nobody allowed this MAC: no answer at all, and no script for it either.
        assert dhcp(unknown, tmp_path / "unknown", "ipxe") is None
        missing = tmp_path / "missing.ipxe"
        url = f"http://{net.address}:{HTTP_PORT}/boot/{UNKNOWN.replace(':', '-')}.ipxe"
        done = in_ns(allowed, ["curl", "-s", "-o", str(missing), "-w", "%{http_code}", url])
        assert done.stdout == "404"
        for path in ("/", "/state", "/../ca.pem", "/dnsmasq.conf", "/tftp/undionly.kpxe"):
            done = in_ns(allowed, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                   f"http://{net.address}:{HTTP_PORT}{path}"])  # fmt: skip
            assert done.stdout == "404", path

        # Forgotten: dnsmasq reloaded, no more answers for it; the server kept running.
        assert registry.forget(ALLOWED)
        assert not registry.forget(ALLOWED)
        _wait_reloaded(server, ALLOWED, present=False)
        assert dhcp(allowed, tmp_path / "forgotten", "ipxe") is None
        assert server.process.poll() is None
        access = [
            json.loads(line) for line in (server.state / "access.log").read_text().splitlines()
        ]
        assert [(e["path"], e["status"]) for e in access][:5] == [
            ("/boot.ipxe", 200),
            ("/boot/52-54-00-12-34-56.ipxe", 200),
            ("/vmlinuz", 200),
            ("/initramfs.img", 200),
            ("/boot/52-54-00-ab-cd-ef.ipxe", 404),
        ]
    finally:
        assert server.stop() == 0, server.log_text()


def test_tftp_serves_the_ipxe_binaries(net: BootNet, tmp_path: Path, ramdisk: Path) -> None:
    server = _server(net, tmp_path, ramdisk, "--uefi-binary", "ipxe.efi")
    try:
        client = net.add_client(ALLOWED)
        in_ns(client, ["ip", "addr", "add", f"{net.dhcp_range()[0]}/24", "dev", "eth0"])
        for name in ("undionly.kpxe", "ipxe.efi"):
            got = tmp_path / name
            done = _curl(net, client, f"tftp://{net.address}/{name}", got)
            assert done.returncode == 0, done.stderr
            assert got.read_bytes() == Path("/usr/lib/ipxe", name).read_bytes()
        # only the binaries: not the state folder's other files
        done = _curl(net, client, f"tftp://{net.address}/../dnsmasq.conf", tmp_path / "x")
        assert done.returncode != 0
        done = _curl(net, client, f"tftp://{net.address}/snponly.efi", tmp_path / "y")
        assert done.returncode != 0
    finally:
        assert server.stop() == 0, server.log_text()


def test_unknown_hosts_address_or_discover(net: BootNet, tmp_path: Path, ramdisk: Path) -> None:
    server = _server(net, tmp_path / "a", ramdisk, "--unknown-hosts", "address")
    client = net.add_client(UNKNOWN)
    try:
        lease = dhcp(client, tmp_path / "address", "ipxe")
        assert lease is not None, server.log_text()
        assert lease["boot"] == "", lease
    finally:
        assert server.stop() == 0, server.log_text()
    server = _server(net, tmp_path / "d", ramdisk, "--unknown-hosts", "discover")
    try:
        lease = dhcp(client, tmp_path / "discover", "ipxe")
        assert lease is not None, server.log_text()
        assert lease["boot"] == f"http://{net.address}:{HTTP_PORT}/boot.ipxe"
        script = tmp_path / "discover.ipxe"
        url = f"http://{net.address}:{HTTP_PORT}/boot/{UNKNOWN.replace(':', '-')}.ipxe"
        assert _curl(net, client, url, script).returncode == 0
        assert f"metal3.agent_api={AGENT_API}" in script.read_text()
    finally:
        assert server.stop() == 0, server.log_text()


def _listening(namespace: str | None) -> list[tuple[str, str, str]]:
    """(protocol, local address, process) of every listening socket (ss -lntupH)."""
    argv = ["ss", "-lntupH"]
    if namespace is not None:
        argv = ["ip", "netns", "exec", namespace, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [(f[0], f[4], f[-1]) for f in (line.split() for line in out.splitlines()) if f]


def test_bound_to_the_provisioning_network_only(
    net: BootNet, tmp_path: Path, ramdisk: Path
) -> None:
    before = _listening(None)
    server = _server(net, tmp_path, ramdisk, "--unknown-hosts", "discover")
    try:
        pids = {server.process.pid, server.dnsmasq_pid()}
        ours = [s for s in _listening(net.server_ns) if any(f"pid={p}," in s[2] for p in pids)]
        # dnsmasq's TFTP also takes the bridge's IPv6 link-local address: still this link only
        local = sorted(
            (proto, address)
            for proto, address, _ in ours
            if not (address.startswith("[fe80::") and address.endswith("]%br0:69"))
        )
        # DHCP on the bridge device only, TFTP and HTTP on the provisioning address only
        assert local == [
            ("tcp", f"{net.address}:{HTTP_PORT}"),
            ("udp", "0.0.0.0%br0:67"),
            ("udp", f"{net.address}:69"),
        ], ours
        # nothing of ours in the machine's own namespace (others' sockets may come and go)
        after = _listening(None)
        assert not [s for s in after if any(f"pid={p}," in s[2] for p in pids)]
        assert not [s for s in after if s not in before and f":{HTTP_PORT}" in s[1]]
        # the "machine's own" network next to it gets no DHCP answer and no HTTP, even when
        # unknown hosts are booted on the provisioning network
        assert dhcp(net.outside_ns, tmp_path / "outside", "ipxe") is None
        in_ns(
            net.outside_ns, ["ip", "addr", "add", f"{net.outside_address[:-1]}9/24", "dev", "eth0"]
        )
        outside_url = f"http://{net.outside_address}:{HTTP_PORT}/boot.ipxe"
        done = in_ns(net.outside_ns, ["curl", "-sS", "--max-time", "5", outside_url])
        assert done.returncode != 0
        done = _curl(net, net.outside_ns, f"tftp://{net.outside_address}/undionly.kpxe",
                     tmp_path / "x")  # fmt: skip
        assert done.returncode != 0
    finally:
        assert server.stop() == 0, server.log_text()


def test_registry_files() -> None:
    assert normalize_mac("52-54-00-AA-bb-cc") == "52:54:00:aa:bb:cc"
    with pytest.raises(BootServerError):
        normalize_mac("52:54:00:aa:bb")
    with pytest.raises(BootServerError):
        BootServer(Path("/nonexistent")).allow(ALLOWED, kernel_args="a\nb")


def test_registry_round_trip(tmp_path: Path) -> None:
    registry = BootServer(tmp_path)
    assert registry.allowed() == {} and registry.stamp() == ()
    entry = registry.allow(ALLOWED, name="h", kernel_args="x=1")
    stamp = registry.stamp()
    assert registry.allow(ALLOWED, name="h", kernel_args="x=1") == entry
    assert registry.stamp() == stamp  # unchanged: not rewritten
    (tmp_path / "hosts" / "52-54-00-00-00-01.json").write_text("{not json")
    (tmp_path / "hosts" / "52-54-00-00-00-02.json").write_text(json.dumps({"mac": ALLOWED}))
    assert list(registry.allowed()) == [ALLOWED]  # the broken and the misnamed are skipped
    assert registry.allowed()[ALLOWED].kernel_args == "x=1"
    assert [p.name for p in (tmp_path / "hosts").iterdir() if p.name.startswith(".")] == []


def test_refuses_an_address_or_range_off_the_interface(
    net: BootNet, tmp_path: Path, ramdisk: Path
) -> None:
    """--listen must be the provisioning interface's own address (not the machine's other
    one), and the DHCP range on its subnet; nothing is started otherwise."""
    first, last = net.dhcp_range()
    other = net.outside_address  # x.y.z.1 on the other interface's subnet
    cases = {
        "listen": (net.outside_address, f"{first},{last}", "is not an address of br0"),
        "range": (net.address, f"{other[:-1]}100,{other[:-1]}150", "not in "),
    }
    for name, (listen, dhcp_range, said) in cases.items():
        argv = [
            sys.executable, "-m", "metal3", "bootserver", "--interface", "br0",
            "--listen", listen, "--dhcp-range", dhcp_range,
            "--state-dir", str(tmp_path / name), "--ramdisk", str(ramdisk),
            "--agent-api", AGENT_API,
        ]  # fmt: skip
        done = in_ns(net.server_ns, argv)
        assert done.returncode == 1, (name, done.stderr)
        assert said in done.stderr, (name, done.stderr)
        assert not (tmp_path / name / "dnsmasq.conf").exists()
