"""The command line: `--discovery`, `--discovery-namespace`, `--discovery-per-minute` on
`metal3 operator` and `metal3 standalone`, refused when they cannot work, and
`metal3 standalone --discovery` making a host of an unknown agent's inventory."""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apiserver.apiserver_kit import current_kubectl
from discovery.kit import inventory
from metal3.agent.client import AgentApiError, AgentClient
from metal3.cli import operator as operator_cli
from metal3.cli import standalone as standalone_cli


def parse(configure: object, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)  # type: ignore[operator]
    return parser.parse_args(list(argv))


def test_options_and_their_refusals() -> None:
    assert operator_cli.discovery_options(parse(operator_cli.configure)) is None
    options = operator_cli.discovery_options(
        parse(operator_cli.configure, "--discovery", "--agent-listen", "0.0.0.0:9443")
    )
    assert options is not None
    assert (options.namespace, options.hosts_per_minute) == ("default", 10)
    options = operator_cli.discovery_options(
        parse(standalone_cli.configure, "--data-dir", "x", "--discovery", "--lab", "lab",
              "--namespace", "racks", "--discovery-per-minute", "3")
    )  # fmt: skip
    assert options is not None
    assert (options.namespace, options.hosts_per_minute) == ("racks", 3)
    for argv, message in [
        (["--discovery"], "--discovery needs the agent API"),
        (["--discovery-configmap", "ns/cm"], "--discovery-configmap needs the agent API"),
        (["--discovery-configmap", "cm", "--agent-listen", ":1"], "NAMESPACE/NAME"),
        (["--discovery-namespace", "x"], "--discovery-namespace needs --discovery"),
        (["--discovery", "--agent-listen", ":1", "--discovery-per-minute", "0"], "at least 1"),
        (["--discovery", "--agent-listen", ":1", "--namespace", "a",
          "--discovery-namespace", "b"], "is not watched"),
        (["--discovery", "--agent-listen", ":1", "--discovery-namespace", "Racks/A"],
         "is not a namespace name"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            operator_cli.discovery_options(parse(operator_cli.configure, *argv))


def test_operator_without_agent_api_says_why() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "metal3", "operator", "--discovery"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--discovery needs the agent API" in done.stderr


def test_standalone_discovers_an_unknown_agent(tmp_path: Path) -> None:
    log = tmp_path / "standalone.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "metal3", "standalone", "--data-dir", str(tmp_path / "data"),
             "--listen", "127.0.0.1:0", "--health-addr", "127.0.0.1:0", "--grace-period", "5",
             "--provisioner", "fixture", "--agent-listen", "127.0.0.1:0", "--discovery",
             "--discovery-namespace", "default"],
            stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (
            found := re.search(
                r"^agent API at (\S+) \(agents trust CA (\S+)\)", log.read_text(), re.M
            )
        ):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        url, ca = found.group(1), found.group(2)
        kubeconfig = re.search(r"^kubeconfig: (\S+)$", log.read_text(), re.M)
        assert kubeconfig is not None
        macs = ["02:dd:00:00:00:01"]
        with AgentClient(url, ca_file=ca) as agent:
            while True:
                try:
                    lookup = agent.lookup(macs, serial_number="CLI-SERIAL-1")
                    break
                except AgentApiError as exc:
                    assert exc.status == 503 and time.monotonic() < deadline, exc
                    time.sleep(0.1)
            assert lookup.discovery_token is not None
            answer = agent.send_inventory(
                lookup.discovery_token, inventory(macs, serial="CLI-SERIAL-1")
            )
        assert answer == {"host": {"namespace": "default", "name": "cli-serial-1"}, "created": True}
        deadline = time.monotonic() + 60
        while True:
            shown = subprocess.run(
                [current_kubectl(), "--kubeconfig", str(tmp_path / "data" / "kubeconfig"),
                 "get", "bmh", "cli-serial-1", "-o",
                 "jsonpath={.status.provisioning.state} {.status.operationalStatus}"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if shown.stdout == "unmanaged discovered":
                break
            assert time.monotonic() < deadline, (shown.stdout, shown.stderr)
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
