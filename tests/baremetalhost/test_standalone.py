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


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    found: list[int] = []
    for task in tasks.iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_api_server_is_a_child_that_dies_with_standalone(tmp_path: Path) -> None:
    """The API server runs as standalone's child (`metal3 apiserver`, its store locked: a
    second server on the directory is refused); killing standalone with SIGKILL takes the
    server with it (the kernel's parent-death signal), and a restart serves the store."""
    data_dir = tmp_path / "standalone"
    proc, kubeconfig = start(data_dir)
    try:
        kubectl(kubeconfig, "create", "namespace", "kept")
        servers = [
            c for c in _children(proc.pid)
            if b"apiserver" in Path(f"/proc/{c}/cmdline").read_bytes().split(b"\0")
        ]  # fmt: skip
        assert len(servers) == 1, _children(proc.pid)
        second = subprocess.run(
            [sys.executable, "-m", "metal3", "apiserver", "--data-dir", str(data_dir),
             "--listen", "127.0.0.1:0"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 1, second
        assert "another API server is using" in second.stderr, second.stderr
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(servers[0]):
            assert time.monotonic() < deadline, "the API server outlived standalone"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        assert proc.stdout is not None
        proc.stdout.close()
    proc, kubeconfig = start(data_dir)
    try:
        assert "kept" in kubectl(kubeconfig, "get", "namespace", "kept", "-o", "name")
    finally:
        stop(proc)


def test_a_taken_port_is_a_clear_error_and_the_server_exits_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    """Standalone on a port something else listens on ends with one error line, no
    traceback; `metal3 apiserver` stopped with SIGTERM closes its store and exits with 0
    (uvicorn raised the signal again after its shutdown, which killed the process first)."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "metal3", "standalone", "--data-dir", str(tmp_path / "s"),
             "--listen", f"127.0.0.1:{port}", "--health-addr", "127.0.0.1:0",
             "--provisioner", "fixture"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 1, done
    assert "metal3 standalone: error:" in done.stderr and "in use" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr

    server = subprocess.Popen(
        [sys.executable, "-m", "metal3", "apiserver", "--data-dir", str(tmp_path / "a"),
         "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert server.stdout is not None
    for line in server.stdout:
        if line.startswith("kubeconfig:"):
            break
    kubectl(tmp_path / "a" / "kubeconfig", "create", "namespace", "kept")
    server.send_signal(signal.SIGTERM)
    output = server.communicate(timeout=30)[0]
    assert server.returncode == 0, output
