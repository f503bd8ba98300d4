"""The iPXE scripts the boot server hands out.

An iPXE client (the firmware's own iPXE, as in QEMU's NIC ROMs, or the iPXE binary our TFTP
hands a plain PXE or UEFI client) is told by DHCP to fetch `/boot.ipxe`. That script has no
state: it chains `/boot/<mac>.ipxe` for the MAC of the interface iPXE last opened (`netX`,
the one that booted), as Ironic's boot script does. The per-MAC script is made at request
time from the registry: the agent's kernel and initramfs over HTTP with the kernel command
line that points the agent at its API. A MAC with no script (not registered, no discovery)
leaves iPXE to `exit`, so the firmware goes on to its next boot device.

No script configures the network again: the DHCP lease iPXE booted with is reused, so no
IPv6 configurator runs (iPXE's `dhcp`/`ifconf` without `-c dhcp` waits for a router
advertisement first).
"""

from __future__ import annotations

import shlex

CHAIN_PATH = "/boot.ipxe"
HOST_PREFIX = "/boot/"
KERNEL_PATH = "/vmlinuz"
INITRAMFS_PATH = "/initramfs.img"


def chain_script(base_url: str) -> str:
    """The script DHCP names for every iPXE client: on to its own script by MAC."""
    return (
        "#!ipxe\n"
        "# metal3 boot server: the boot of this interface, by its MAC\n"
        f"chain --autofree {base_url}{HOST_PREFIX}${{netX/mac:hexhyp}}.ipxe || goto none\n"
        ":none\n"
        "echo metal3 boot server: no network boot for ${netX/mac}\n"
        "exit 1\n"
    )


def kernel_command_line(
    *, agent_api: str, agent_ca_b64: str | None, console: str, extra: str = ""
) -> str:
    """What the agent's kernel boots with: the agent API (and its CA), the console."""
    words = [f"console={console}"] if console else []
    words.append(f"metal3.agent_api={agent_api}")
    if agent_ca_b64:
        words.append(f"metal3.agent_ca={agent_ca_b64}")
    words += shlex.split(extra)
    return " ".join(words)


def host_script(base_url: str, *, mac: str, command_line: str) -> str:
    """The agent ramdisk for one host; a failed download is tried again (the server may be
    restarting), the host is never left to boot something else by accident."""
    return (
        "#!ipxe\n"
        f"# metal3 boot server: the agent ramdisk for {mac}\n"
        ":retry\n"
        "imgfree\n"
        f"kernel {base_url}{KERNEL_PATH} initrd=initramfs.img {command_line} || goto failed\n"
        f"initrd {base_url}{INITRAMFS_PATH} || goto failed\n"
        "boot || goto failed\n"
        ":failed\n"
        "echo metal3 boot server: loading the agent failed; again in 5 seconds\n"
        "sleep 5\n"
        "goto retry\n"
    )
