"""The `cpu` section: what ironic-python-agent reports from `lscpu` and /proc/cpuinfo.

Read from the sources `lscpu` itself reads, so no tool is needed:
- `model_name`: "model name" of the first processor in /proc/cpuinfo (None when absent).
- `frequency`: a string in MHz: the highest `cpufreq/cpuinfo_max_freq` of any CPU, written as
  `lscpu` writes "CPU max MHz" ("3700.0000"); without cpufreq (virtual machines), the first
  processor's "cpu MHz" from /proc/cpuinfo as written there ("2300.000"), which is what older
  `lscpu` printed as "CPU MHz"; "" when neither exists. (IPA with util-linux 2.38 gives None
  on a machine without cpufreq: newer `lscpu` no longer prints "CPU MHz".)
- `count`: logical CPUs (processor entries in /proc/cpuinfo, hyper-threads included).
- `architecture`: /proc/sys/kernel/arch (the kernel's `uname -m`).
- `flags`: the first processor's "flags" (x86) or "Features" (Arm) list.
- `socket_count`: distinct "physical id" values, else distinct
  `topology/physical_package_id` of the CPUs in sysfs, else 1.
"""

from __future__ import annotations

import logging
import os
from typing import TypedDict

from metal3.agent.inventory.sysroot import SysRoot

log = logging.getLogger(__name__)

CPU_SYSFS = "sys/devices/system/cpu"


class CpuInfo(TypedDict):
    model_name: str | None
    frequency: str
    count: int
    architecture: str | None
    flags: list[str]
    socket_count: int


def collect_cpu(host: SysRoot) -> CpuInfo | None:
    """The `cpu` section, or None when /proc/cpuinfo cannot be read."""
    text = host.read("proc/cpuinfo")
    if text is None:
        log.warning("cpu: cannot read %s; the cpu section is left out", host.path("proc/cpuinfo"))
        return None
    processors = [block for block in parse_cpuinfo(text) if "processor" in block]
    first = processors[0] if processors else {}
    flags = first.get("flags", first.get("Features", ""))
    return CpuInfo(
        model_name=first.get("model name") or None,
        frequency=_frequency(host, first),
        count=len(processors),
        architecture=_architecture(host),
        flags=flags.split(),
        socket_count=_socket_count(host, processors),
    )


def parse_cpuinfo(text: str) -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per blank-line separated block ("key : value" lines)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip()] = value.strip()
    if current:
        blocks.append(current)
    return blocks


def _cpu_dirs(host: SysRoot) -> list[str]:
    return [
        name for name in host.listdir(CPU_SYSFS) if name.startswith("cpu") and name[3:].isdigit()
    ]


def _frequency(host: SysRoot, first: dict[str, str]) -> str:
    khz = []
    for cpu in _cpu_dirs(host):
        value = host.attr(f"{CPU_SYSFS}/{cpu}/cpufreq/cpuinfo_max_freq")
        if value is not None and value.isdigit():
            khz.append(int(value))
    if khz:
        return f"{max(khz) / 1000:.4f}"
    return first.get("cpu MHz", "")


def _architecture(host: SysRoot) -> str | None:
    arch = host.attr("proc/sys/kernel/arch")
    if arch is None and host.live:
        arch = os.uname().machine
    if arch is None:
        log.warning("cpu: no %s; architecture unknown", host.path("proc/sys/kernel/arch"))
    return arch


def _socket_count(host: SysRoot, processors: list[dict[str, str]]) -> int:
    ids = {p["physical id"] for p in processors if "physical id" in p}
    if ids:
        return len(ids)
    packages = set()
    for cpu in _cpu_dirs(host):
        package = host.attr(f"{CPU_SYSFS}/{cpu}/topology/physical_package_id")
        if package is not None:
            packages.add(package)
    if packages:
        return len(packages)
    log.info("cpu: no physical id or package id for any CPU; counting one socket")
    return 1
