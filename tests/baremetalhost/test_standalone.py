"""`metal3 standalone`: kubectl manages hosts; Ctrl-C stops cleanly; a restart carries on."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from apiserver.apiserver_kit import current_kubectl

REPO = Path(__file__).resolve().parents[2]


def start(data_dir: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "metal3", "standalone", "--data-dir", str(data_dir),
         "--listen", "127.0.0.1:0", "--health-addr", "127.0.0.1:0", "--grace-period", "5",
         "--provisioner", "fixture"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.match(r"kubeconfig: (\S+)", line)
        if match:
            return proc, Path(match.group(1))
    raise AssertionError("standalone did not start")


def kubectl(kubeconfig: Path, *args: str) -> str:
    result = subprocess.run(
        [current_kubectl(), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_for_state(
    kubeconfig: Path, name: str, state: str, timeout: float = 60
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = json.loads(kubectl(kubeconfig, "-n", "metal3", "get", "bmh", name, "-o", "json"))
        if obj.get("status", {}).get("provisioning", {}).get("state") == state:
            return obj  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"{name} never reached {state}")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    return output


def test_kubectl_manages_hosts_and_a_restart_carries_on(tmp_path: Path) -> None:
    data_dir = tmp_path / "standalone"
    proc, kubeconfig = start(data_dir)
    try:
        kubectl(kubeconfig, "create", "namespace", "metal3")
        kubectl(kubeconfig, "apply", "-f", str(REPO / "examples" / "provisioned-image.yaml"))
        kubectl(kubeconfig, "wait", "-n", "metal3", "bmh/worker-3", "--for=condition=Ready",
                "--timeout=60s")  # fmt: skip
        table = kubectl(kubeconfig, "get", "bmh", "-n", "metal3")
        assert re.search(r"worker-3\s+provisioned\s+true", table), table
        first = wait_for_state(kubeconfig, "worker-3", "provisioned")
    finally:
        output = stop(proc)
    assert "Traceback" not in output, output

    proc, kubeconfig = start(data_dir)  # same directory: same store, same simulated hardware
    try:
        again = wait_for_state(kubeconfig, "worker-3", "provisioned")
        assert again["metadata"]["uid"] == first["metadata"]["uid"]  # type: ignore[index]
        hardware = json.loads((data_dir / "fixture-hardware.json").read_text())
        record = hardware[first["metadata"]["uid"]]  # type: ignore[index]
        assert record["counts"]["provision"] == 1, "not provisioned again after the restart"
        kubectl(kubeconfig, "delete", "-n", "metal3", "bmh/worker-3", "--timeout=60s")
        assert "worker-3" not in kubectl(kubeconfig, "get", "bmh", "-n", "metal3")
    finally:
        stop(proc)
