"""The command line of the direct provisioner: the default of `metal3 operator` and
`metal3 standalone`, its options, and `--lab DIR` (the lab's agent API and boot media from
DIR/lab.json), run as the user runs them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metal3.agent.client import AgentApiError, AgentClient
from metal3.bmc.emulators import free_port
from metal3.tls import TLSFiles, make_tls_files


def metal3(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metal3", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("command", ["operator", "standalone"])
def test_help_shows_the_direct_provisioner_as_the_default(command: str) -> None:
    done = metal3(command, "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "--provisioner {direct,fixture}" in text
    assert "direct (default): the hosts' BMCs and the metal3 agent booted on them" in text
    for flag in ("--lab DIR", "--agent-iso-url URL", "--agent-kernel-url URL",
                 "--agent-initramfs-url URL", "--agent-timeout SECONDS"):  # fmt: skip
        assert flag in text, flag


def make_lab(directory: Path, *, pid: int) -> dict[str, object]:
    """A lab.json as `metal3 lab up` writes it (the contract in the design notes), with TLS
    files for 127.0.0.1."""
    folder = directory / "agent-api"
    folder.mkdir(parents=True)
    tls = make_tls_files(
        TLSFiles(folder / "ca.pem", folder / "cert.pem", folder / "key.pem"),
        ["127.0.0.1", "10.99.0.1"],
        ca_common_name="lab CA",
        server_common_name="lab agent API",
        days=1,
    )
    port = free_port()
    lab: dict[str, object] = {
        "version": 1,
        "supervisor_pid": pid,
        "network": {"namespace": "m3lab-test", "subnet": "10.99.0.0/24", "gateway": "10.99.0.1"},
        "agent_api": {
            "listen": f"127.0.0.1:{port}",
            "lab_address": f"10.99.0.1:{port}",
            "ca_file": str(tls.ca_cert),
            "cert_file": str(tls.cert),
            "key_file": str(tls.key),
        },
        "images": {"dir": str(directory / "images"), "url": "http://10.99.0.1:8080/",
                   "local_url": "http://127.0.0.1:8080/"},
        "agent_iso_url": "http://127.0.0.1:8080/agent.iso",
        "hosts": [],
    }  # fmt: skip
    (directory / "lab.json").write_text(json.dumps(lab))
    return lab


def test_lab_options_are_checked(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    done = metal3("operator", "--kubeconfig", "x", "--lab", str(lab_dir))
    assert done.returncode == 2
    assert f"{lab_dir / 'lab.json'} not found: is a lab up there?" in done.stderr

    gone = subprocess.Popen(["true"])
    gone.wait()
    make_lab(lab_dir, pid=gone.pid)
    done = metal3("standalone", "--data-dir", str(tmp_path / "d"), "--lab", str(lab_dir))
    assert done.returncode == 2
    assert f"the lab in {lab_dir} is not running (its supervisor, pid {gone.pid}, is gone)" in (
        done.stderr
    )

    (lab_dir / "lab.json").unlink()
    make_lab(tmp_path / "lab2", pid=os.getpid())
    live = str(tmp_path / "lab2")
    for extra, message in [
        (("--agent-listen", "127.0.0.1:0"), "--lab serves the agent API where the lab says"),
        (("--provisioner", "fixture"), "--lab drives the lab's hosts with the direct provisioner"),
        (("--agent-iso-url", "http://x/a.iso"), "drop --agent-iso-url"),
    ]:
        done = metal3("standalone", "--data-dir", str(tmp_path / "d"), "--lab", live, *extra)
        assert done.returncode == 2, extra
        assert message in done.stderr, (extra, done.stderr)
    done = metal3("operator", "--kubeconfig", "x", "--agent-kernel-url", "http://x/k")
    assert done.returncode == 2
    assert "--agent-kernel-url and --agent-initramfs-url go together" in done.stderr
    done = metal3("operator", "--kubeconfig", "x", "--agent-timeout", "0")
    assert done.returncode == 2
    assert "--agent-timeout must be a positive number of seconds" in done.stderr


def test_standalone_serves_the_agent_api_where_the_lab_says(tmp_path: Path) -> None:
    lab = make_lab(tmp_path / "lab", pid=os.getpid())
    api = lab["agent_api"]
    assert isinstance(api, dict)
    proc = subprocess.Popen(
        [sys.executable, "-m", "metal3", "standalone", "--data-dir", str(tmp_path / "data"),
         "--listen", "127.0.0.1:0", "--health-addr", "127.0.0.1:0", "--grace-period", "5",
         "--lab", str(tmp_path / "lab")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    output = []
    try:
        for line in proc.stdout:
            output.append(line)
            match = re.match(r"agent API at (\S+) \(agents trust CA (\S+)\)", line)
            if match:
                assert match.group(1) == f"https://{api['listen']}"
                assert match.group(2) == api["ca_file"]
                break
        else:
            raise AssertionError("no agent API line:\n" + "".join(output))
        # An agent trusting the lab's CA reaches it: an unknown MAC is a 404, over TLS.
        client = AgentClient(f"https://{api['listen']}", ca_file=str(api["ca_file"]))
        try:
            status = _lookup_status(client, "52:54:00:12:34:56")
        finally:
            client.close()
        assert status == 404
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, "".join(output) + rest
    assert "Traceback" not in rest


def _lookup_status(client: AgentClient, mac: str) -> int:
    """The HTTP status of a lookup, once the operator has listed the hosts (no more 503)."""
    for _ in range(100):
        try:
            client.lookup([mac])
        except AgentApiError as exc:
            if exc.status != 503:
                return exc.status
            time.sleep(0.1)
        else:
            return 200
    raise AssertionError("the agent API kept answering 503")
