"""`lab up` and `lab down` around failures: a second `up` on a running lab is refused, a
setup that fails removes what it made, and `down` after the supervisor was SIGKILLed (with an
agent running) still removes every namespace, loop device, process and the hosts' CPU group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from lab.helpers import root_namespace, run_metal3, wait_for
from metal3.lab import cpu
from metal3.lab.resources import Journal, lab_prefixes, leftovers, process_start_time


def netns_with(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith(prefix)]


def loops_over(folder: Path) -> list[str]:
    out = subprocess.run(
        ["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    devices = json.loads(out or '{"loopdevices": []}')["loopdevices"]
    return [d["name"] for d in devices if str(d["back-file"]).startswith(str(folder))]


def alive(pid: int) -> bool:
    return process_start_time(pid) is not None


def redfish_power_on_pxe(address: str, username: str, password: str, folder: Path) -> None:
    secret = folder / "password"
    secret.write_text(password)
    for action in (["boot", "pxe"], ["power", "on"]):
        done = run_metal3(
            "bmc", address, "--username", username, "--password-file", str(secret), *action
        )
        assert done.returncode == 0, done.stderr


def test_down_after_a_killed_supervisor_removes_everything(tmp_path: Path) -> None:
    data_dir = tmp_path / "lab"
    before = root_namespace()
    up = run_metal3("lab", "up", "--hosts", "2", "--power-delay", "0", "--data-dir", str(data_dir))
    assert up.returncode == 0, up.stderr
    lab = json.loads((data_dir / "lab.json").read_text())
    prefix = lab["network"]["namespace"]
    assert len(netns_with(prefix)) == 3  # the lab's and one per host
    assert len(loops_over(data_dir)) == 4

    again = run_metal3("lab", "up", "--hosts", "1", "--data-dir", str(data_dir))
    assert again.returncode == 1
    assert f"supervisor pid {lab['supervisor_pid']}" in again.stderr

    host = lab["hosts"][0]
    creds = host["credentials"]
    redfish_power_on_pxe(host["bmc_address"], creds["username"], creds["password"], tmp_path)
    state_file = data_dir / "hosts" / host["name"] / "state.json"
    agent = wait_for(lambda: json.loads(state_file.read_text())["agent"]["pid"], "the agent")
    # The agent runs in the hosts' CPU group, at an eighth of the default weight.
    assert lab["hosts_cpu"]["group"], lab["hosts_cpu"]["note"]  # this machine can make one
    group = Path(lab["hosts_cpu"]["group"])
    name, weight = cpu.weight_file(group)
    assert group.name == prefix and (group / name).read_text().strip() == weight
    assert agent in cpu.members(group)
    assert os.getpid() not in cpu.members(group)
    processes = [int(e["pid"]) for e in Journal(data_dir / "journal.jsonl").entries()
                 if e.get("kind") == "process"]  # fmt: skip
    journal = Journal(data_dir / "journal.jsonl").entries()

    os.kill(lab["supervisor_pid"], signal.SIGKILL)
    wait_for(lambda: not alive(lab["supervisor_pid"]), "the supervisor to die")
    status = run_metal3("lab", "status", "--data-dir", str(data_dir))
    assert "NOT RUNNING" in status.stdout
    assert f"hosts' CPU: the low-weight cgroup {group}" in status.stdout

    down = run_metal3("lab", "down", "--data-dir", str(data_dir))
    assert down.returncode == 0, down.stderr
    assert netns_with(prefix) == []
    assert loops_over(data_dir) == []
    assert not group.exists()
    assert leftovers(data_dir, lab_prefixes(journal)) == []
    for pid in [agent, *processes]:
        assert not alive(pid), pid
    assert not (data_dir / "lab.json").exists()
    after = root_namespace()
    assert (after.addr, after.route, after.link) == (before.addr, before.route, before.link)

    second = run_metal3("lab", "down", "--data-dir", str(data_dir))
    assert second.returncode == 0, second.stderr  # nothing left to do is fine


def test_failed_setup_removes_what_it_made(tmp_path: Path) -> None:
    data_dir = tmp_path / "lab"
    (data_dir / "images" / "agent.iso").mkdir(parents=True)  # the agent ISO cannot be written
    up = run_metal3("lab", "up", "--hosts", "3", "--data-dir", str(data_dir))
    assert up.returncode == 1
    assert "before the lab was ready" in up.stderr
    assert "IsADirectoryError" in up.stderr
    # Made before the failure (network, then disks), removed after it: the lab's namespace and
    # one per host; the disks of a small, a medium and a storage host (2 + 2 + 4).
    assert "removed 4 namespaces, 8 loop devices" in (data_dir / "supervisor.log").read_text()
    assert loops_over(data_dir) == []
    assert not (data_dir / "lab.json").exists()
    assert not (data_dir / "journal.jsonl").exists()  # everything in it was removed


def test_status_and_down_without_a_lab(tmp_path: Path) -> None:
    status = run_metal3("lab", "status", "--data-dir", str(tmp_path))
    assert status.returncode == 1
    assert "no lab in" in status.stderr
    down = run_metal3("lab", "down", "--data-dir", str(tmp_path))
    assert down.returncode == 0, down.stderr


def test_bad_requests_are_refused_before_anything_is_made(tmp_path: Path) -> None:
    for args, message in (
        (["--hosts", "0"], "at least one host"),
        (["--hosts", "2", "--ipmi-hosts", "3"], "do not fit"),
        (["--profile", "huge"], "no profile 'huge'"),
    ):
        done = run_metal3("lab", "up", "--data-dir", str(tmp_path / "x"), *args)
        assert done.returncode == 2
        assert message in done.stderr
    assert not (tmp_path / "x").exists()
