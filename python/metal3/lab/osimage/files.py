"""The files the build writes into the test OS image: cloud-init's settings, the console report,
the serial getty, the boot loader's menu, fstab.

Their text is part of the image's cache key (`all_texts`), so editing any of them rebuilds.
"""

from __future__ import annotations

REPORT_PREFIX = "metal3-os-image:"
"""The first word of the line the image prints on its console once cloud-init is done."""

DEFAULT_HOSTNAME = "metal3-os"
"""The host name the image has before cloud-init sets one (and keeps without a datasource)."""

DEFAULT_USER = "debian"

# ds-identify (cloud-init's systemd generator) reads `datasource_list` with a line-based parser:
# it has to stay on one line. Network configuration is off: the image has no network renderer
# worth waiting for (no ifupdown, networkd not enabled), and its boots under TCG stay short.
# growpart/resizefs are off: the root partition is followed by the config drive, and growing
# ext4 under emulation costs seconds for nothing a test reads. The module lists keep what a
# test's user data and meta_data use (host name, users and keys, files, commands, scripts);
# set-passwords is left out, as it only warns that there is no sshd.
CLOUD_CFG = f"""\
# metal3 test OS image: the config drive is the only datasource (None: boot without one).
datasource_list: [ ConfigDrive, None ]
network: {{config: disabled}}
growpart: {{mode: "off"}}
resize_rootfs: false
ssh_genkeytypes: [ed25519]
ssh_deletekeys: false
system_info:
  default_user:
    name: {DEFAULT_USER}
    lock_passwd: true
    gecos: Debian
    groups: [adm, sudo]
    shell: /bin/bash
cloud_init_modules:
  - seed_random
  - bootcmd
  - write-files
  - set_hostname
  - update_hostname
  - update_etc_hosts
  - users-groups
  - ssh
cloud_config_modules:
  - runcmd
cloud_final_modules:
  - write-files-deferred
  - scripts-per-once
  - scripts-per-boot
  - scripts-per-instance
  - scripts-user
  - final-message
  - power-state-change
"""

# Runs inside the image (Debian's python3, standard library only). It waits by watching
# cloud-init's files rather than with `cloud-init status --wait`: importing cloud-init costs
# seconds of CPU under TCG, taken from cloud-init's own stages running at the same time.
REPORT_SCRIPT = f"""\
#!/usr/bin/python3
# metal3 test OS image: print, on one console line, what cloud-init did (after it is done).
import hashlib
import json
import pathlib
import socket
import time


def text(path):
    try:
        return pathlib.Path(path).read_text().strip()
    except OSError:
        return ""


RESULT = pathlib.Path("/run/cloud-init/result.json")  # written when the final stage ends
result = {{}}
if not pathlib.Path("/run/cloud-init/enabled").exists():  # the generator's verdict
    status = "disabled"
else:
    deadline = time.monotonic() + 1800
    while not RESULT.exists() and time.monotonic() < deadline:
        time.sleep(1)
    try:
        result = json.loads(RESULT.read_text())["v1"]
        status = "error" if result.get("errors") else "done"
    except (OSError, ValueError, KeyError, TypeError):
        status = "timeout" if not RESULT.exists() else "unreadable"
described = result.get("datasource") or ""
datasource = described.split(" ")[0].removeprefix("DataSource") or "-"
source = "-"
if "[source=" in described:
    source = described.split("[source=", 1)[1].split("]", 1)[0]
try:
    user_data = pathlib.Path("/var/lib/cloud/instance/user-data.txt").read_bytes()
    user_data_sha256 = hashlib.sha256(user_data).hexdigest() if user_data else "-"
except OSError:
    user_data_sha256 = "-"
keys = text("/home/{DEFAULT_USER}/.ssh/authorized_keys").splitlines()
fields = {{
    "status": status,
    "datasource": datasource,
    "source": source,
    "hostname": socket.gethostname(),
    "instance-id": text("/var/lib/cloud/data/instance-id") or "-",
    "user-data-sha256": user_data_sha256,
    "ssh-keys": str(len([k for k in keys if k.strip() and not k.startswith("#")])),
    "errors": str(len(result.get("errors") or [])),
    "uptime": text("/proc/uptime").split(" ")[0] or "-",
}}
line = " ".join(f"{{k}}={{'_'.join(v.split()) or '-'}}" for k, v in fields.items())
print("{REPORT_PREFIX} " + line, flush=True)
"""

REPORT_UNIT = """\
[Unit]
Description=Report cloud-init's result on the console (metal3 test OS image)

[Service]
# simple, not oneshot: multi-user.target must not wait for it (cloud-final runs after that).
Type=simple
ExecStart=/usr/local/sbin/metal3-os-report
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""

KERNEL_ARGS = "ro console=ttyS0,115200n8"

INITRAMFS_CONF = """\
# metal3 test OS image: the drivers kept in the image are few, so `most` is small.
MODULES=most
COMPRESS=zstd
"""


def extlinux_conf(kernel: str, initrd: str, root_uuid: str) -> str:
    """The boot menu: one entry, no prompt, the serial console as the kernel's console."""
    return (
        "DEFAULT linux\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "SERIAL 0 115200\n"
        "LABEL linux\n"
        f"  LINUX /boot/{kernel}\n"
        f"  INITRD /boot/{initrd}\n"
        f"  APPEND root=UUID={root_uuid} {KERNEL_ARGS}\n"
    )


def fstab(root_uuid: str) -> str:
    # No fsck at boot (pass 0): the file system is fresh, and checking it under TCG costs time.
    return f"UUID={root_uuid} / ext4 errors=remount-ro 0 0\n"


def hosts(hostname: str) -> str:
    return f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost\n"


def all_texts() -> list[str]:
    """Every fixed text written into the image (the cache key covers them)."""
    return [
        CLOUD_CFG,
        REPORT_SCRIPT,
        REPORT_UNIT,
        KERNEL_ARGS,
        INITRAMFS_CONF,
        extlinux_conf("K", "I", "U"),
        fstab("U"),
        hosts(DEFAULT_HOSTNAME),
    ]
