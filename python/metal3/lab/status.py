"""The text `metal3 lab up` and `metal3 lab status` print."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from metal3.lab.state import LabInfo


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def up_summary(info: LabInfo, data_dir: str, seconds: float) -> str:
    lines = [
        f"lab ready in {seconds:.1f} s: {data_dir} (supervisor pid {info.supervisor_pid})",
        f"network:   namespace {info.namespace}, subnet {info.subnet}, gateway {info.gateway}",
        f"agent API: serve it on {info.agent_api_listen} with the TLS files in "
        f"{data_dir}/agent-api/; hosts reach it at {info.agent_api_lab_address}",
        f"images:    {info.images_dir}/ at {info.images_url} (hosts), "
        f"{info.images_local_url} (BMCs, operator)",
        f"agent ISO: {info.agent_iso_url}",
        _hosts_cpu(info.hosts_cpu),
        "",
    ]
    rows = [["NAME", "BMC", "PROFILE", "BOOT MAC", "IP", "DISKS", "MANIFEST"]]
    for host in info.hosts:
        rows.append(
            [
                host.name,
                host.bmc_address,
                host.profile,
                host.boot_mac,
                host.ip,
                ",".join(d.removeprefix("/dev/") for d in host.loop_devices),
                "yes" if host.registered else "no (unregistered)",
            ]
        )
    lines += _table(rows)
    lines += [
        "",
        f"next: metal3 standalone --lab {data_dir}   and   kubectl apply -f {data_dir}/manifests/",
    ]
    return "\n".join(lines)


def status_text(doc: dict[str, Any]) -> str:
    if any(host.get("vm") for host in doc["hosts"]):
        return _vm_status_text(doc)
    running = "running" if doc["running"] else "NOT RUNNING (supervisor gone: `metal3 lab down`)"
    lines = [
        f"lab {doc['data_dir']}: {running}, supervisor pid {doc['supervisor_pid']}",
        f"network {doc['network']['namespace']} {doc['network']['subnet']}, "
        f"agent API at {doc['agent_api']['lab_address']} -> {doc['agent_api']['listen']}",
        _hosts_cpu(doc.get("hosts_cpu") or {}),
        "",
    ]
    rows = [["NAME", "KIND", "PROFILE", "POWER", "BOOTS", "BOOTED", "AGENT", "OS HOSTNAME",
             "USER-DATA SHA256"]]  # fmt: skip
    for host in doc["hosts"]:
        state = host.get("state") or {}
        agent = state.get("agent") or {}
        os_found = host.get("os") or {}
        if agent.get("pid"):
            agent_text = f"pid {agent['pid']}"
        elif agent.get("ready"):
            agent_text = "ready"  # a process has imported the agent for the next boot
        elif agent.get("exit_code") is not None:
            agent_text = f"exited {agent['exit_code']}"
        else:
            agent_text = "-"
        booted = str(state.get("booted") or "-")
        if booted == "nothing":
            booted = f"nothing ({state.get('note', '')})"
        rows.append(
            [
                host["name"],
                host["kind"],
                host["profile"],
                str(state.get("power", "?")),
                str(state.get("boots", 0)),
                booted,
                agent_text,
                str(os_found.get("hostname") or "-") if os_found else "-",
                str(os_found.get("user_data_sha256") or "-") if os_found else "-",
            ]
        )
    return "\n".join(lines + _table(rows))


def _hosts_cpu(hosts_cpu: dict[str, Any]) -> str:
    if hosts_cpu.get("group"):
        return f"hosts' CPU: the low-weight cgroup {hosts_cpu['group']} (the control plane first)"
    return f"hosts' CPU: {hosts_cpu.get('note') or 'shared with the control plane'}"


def _vm_status_text(doc: dict[str, Any]) -> str:
    """A VM lab: each VM's power state as libvirt reports it, then its console's last lines."""
    running = "running" if doc["running"] else "NOT RUNNING (supervisor gone: `metal3 lab down`)"
    lines = [
        f"lab {doc['data_dir']}: {running}, supervisor pid {doc['supervisor_pid']}",
        f"network {doc['network']['namespace']} {doc['network']['subnet']}, "
        f"agent API at {doc['agent_api']['lab_address']} -> {doc['agent_api']['listen']}",
        "",
    ]
    rows = [["NAME", "KIND", "POWER", "BOOT MAC", "BMC"]]
    for host in doc["hosts"]:
        vm = host.get("vm") or {}
        rows.append(
            [host["name"], host["kind"], str(vm.get("state", "?")), host["boot_mac"],
             host["bmc_address"]]
        )  # fmt: skip
    lines += _table(rows)
    for host in doc["hosts"]:
        vm = host.get("vm") or {}
        lines += ["", f"{host['name']} console ({vm.get('console_log', '?')}):"]
        lines += [f"  | {line}" for line in vm.get("console_tail") or ["(nothing yet)"]]
        report = vm.get("os_report")
        if report:
            lines.append(
                f"  OS booted, cloud-init {report.get('status', '-')}: hostname "
                f"{report.get('hostname', '-')}, datasource {report.get('datasource', '-')}, "
                f"user data sha256 {report.get('user-data-sha256', '-')}"
            )
    return "\n".join(lines)
