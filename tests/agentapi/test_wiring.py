"""`--agent-listen` in `metal3 operator` and `metal3 standalone`, and the operator serving the
agent API in-process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from baremetalhost.kit import cluster, host, running_operator
from metal3.agent.client import AgentClient
from metal3.agentapi.server import AgentApiOptions, ensure_tls


def metal3(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metal3", *args], capture_output=True, text=True, timeout=60
    )


def test_operator_refuses_agent_listen_without_tls_files(tmp_path: Path) -> None:
    done = metal3(
        "operator", "--kubeconfig", str(tmp_path / "none"), "--agent-listen", "127.0.0.1:0"
    )
    assert done.returncode == 2
    assert "--agent-listen needs --agent-cert and --agent-key" in done.stderr
    files = ["--agent-cert", str(tmp_path / "c"), "--agent-key", str(tmp_path / "k")]
    done = metal3("operator", "--kubeconfig", "x", "--agent-listen", "127.0.0.1:0", *files)
    assert done.returncode == 2
    assert f"{tmp_path / 'c'}: no such file" in done.stderr
    done = metal3("operator", "--agent-cert", str(tmp_path / "c"), "--kubeconfig", "x")
    assert done.returncode == 2
    assert "need --agent-listen" in done.stderr


def test_standalone_refuses_a_bad_agent_address(tmp_path: Path) -> None:
    done = metal3("standalone", "--data-dir", str(tmp_path / "d"), "--agent-listen", "nowhere")
    assert done.returncode == 2
    assert "HOST:PORT" in done.stderr


@pytest.mark.parametrize("command", ["operator", "standalone"])
def test_help_states_the_default(command: str) -> None:
    text = " ".join(metal3(command, "--help").stdout.split())
    assert "--agent-listen HOST:PORT serve the agent API (HTTPS)" in text
    assert "(default: not served;" in text


@pytest.mark.anyio
async def test_the_operator_serves_the_agent_api(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    tls = ensure_tls(tmp_path, "127.0.0.1")
    options = AgentApiOptions(listen="127.0.0.1:0", cert_file=tls.cert, key_file=tls.key)
    async with cluster(kubeconfig, namespace) as c:
        await c.apply_host(host("h1", namespace, bootMACAddress="52:54:00:c0:ff:ee"))
        async with running_operator(
            kubeconfig, c.world, namespace=namespace, agent_api=options
        ) as operator:
            assert operator.agent_url.startswith("https://127.0.0.1:")
            await c.wait_state("h1", "available")
            client = AgentClient(operator.agent_url, ca_file=tls.ca_cert)
            try:
                found = await anyio.to_thread.run_sync(client.lookup, ["52:54:00:c0:ff:ee"])
                assert (found.name, found.token is not None) == ("h1", True)
                command = await anyio.to_thread.run_sync(client.command, found.uid, found.token)
                assert command["command"] == "wait"  # available and online: fast track
            finally:
                client.close()
