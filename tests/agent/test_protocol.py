"""The agent protocol end to end: the agent (`python -m metal3.agent.runner`, a process)
against a real `metal3 standalone` process with `--agent-listen`, over TLS with the CA the
standalone generated.

Checked: lookup by MAC (unknown MACs get 404), the token given once, missing/wrong/other
host's tokens refused; and a deploy of a real image (served slowly from 127.0.0.1, held
mid-transfer) onto a loop device while the operator is SIGKILLed and restarted: the deploy
completes, its result is recorded once in the host's agent record, the image was fetched once,
and neither the tokens nor the user data appear in any log.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
import yaml

from agentapi.harness import Harness, serving
from apiserver.apiserver_kit import ServerProcess, current_kubectl
from loopdev import LoopDevices, make_backing
from metal3.agent.client import AgentApiError, AgentClient, retrying
from metal3.agent.errors import AgentError
from metal3.agent.runner import (
    AgentState,
    DeployProgress,
    Outcome,
    Runner,
    RunnerOptions,
    at_nice,
    local_macs,
    settings_from_cmdline,
)
from metal3.agentapi.records import AgentRecords
from metal3.agentapi.tokens import new_token
from metal3.kube.resources import BAREMETALHOSTS, SECRETS

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
MAC_A, MAC_B = "52:54:00:7e:57:0a", "52:54:00:7e:57:0b"
NAMESPACE = "agents"
ENV = {**os.environ, "LC_ALL": "C", "BLKID_FILE": "/dev/null"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Standalone:
    """A `metal3 standalone` process whose output is kept (all of it, across restarts)."""

    def __init__(self, data_dir: Path, agent_port: int) -> None:
        self.data_dir = data_dir
        self.agent_port = agent_port
        self.output: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self.kubeconfig = data_dir / "kubeconfig"
        self.ca_file = data_dir / "agent-tls" / "ca.crt"
        self.agent_url = ""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "metal3", "standalone", "--data-dir", str(self.data_dir),
             "--listen", "127.0.0.1:0", "--health-addr", "127.0.0.1:0", "--grace-period", "5",
             "--agent-listen", f"127.0.0.1:{self.agent_port}", "--log-level", "DEBUG",
             "--provisioner", "fixture"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            match = re.match(r"agent API at (\S+) \(agents trust CA (\S+)\)", line)
            if match:
                self.agent_url = match.group(1)
                assert Path(match.group(2)) == self.ca_file
                threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True).start()
                return
        raise AssertionError("standalone did not start:\n" + "".join(self.output))

    def _drain(self, stream: Any) -> None:
        for line in stream:
            self.output.append(line)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [current_kubectl(), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True, text=True, timeout=60, input=stdin,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def client(self) -> AgentClient:
        return AgentClient(self.agent_url, ca_file=self.ca_file)


class HeldImageServer:
    """Serves one image on 127.0.0.1: the first ``hold_at`` bytes, then nothing until
    `release()`, then the rest. Counts the GETs, the ones that got as far as the hold (image
    streams), and the ones that got the whole image."""

    def __init__(self, image: Path, hold_at: int) -> None:
        self.image = image
        self.hold_at = hold_at
        self.gets = 0
        self.streams = 0  # GETs that got the first hold_at bytes
        self.complete = 0  # GETs that got every byte
        self.reached = threading.Event()
        self._released = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path != "/disk.raw":
                    self.send_error(404)
                    return
                outer.gets += 1
                data = outer.image.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                try:
                    self.wfile.write(data[: outer.hold_at])
                    self.wfile.flush()
                    outer.streams += 1
                    outer.reached.set()
                    if not outer._released.wait(timeout=120):
                        return  # the test gave up: end the transfer short
                    self.wfile.write(data[outer.hold_at :])
                    self.wfile.flush()
                    outer.complete += 1
                except (BrokenPipeError, ConnectionResetError):
                    pass  # a reader that wanted only the start (the image's format)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/disk.raw"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HeldImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._released.set()
        self.server.shutdown()
        self.server.server_close()

    def release(self) -> None:
        self._released.set()


def sh(*args: str | Path) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, env=ENV, timeout=120)
    assert done.returncode == 0, f"{args}: {done.stderr.decode(errors='replace')}"
    return done.stdout.decode()


def make_image(path: Path) -> bytes:
    """A 16 MiB GPT disk image with one 8 MiB partition of random bytes; returns the
    partition's bytes."""
    make_backing(path, 16 * MiB)
    sh("sgdisk", "-n1:2048:+8M", "-t1:8300", path)
    payload = os.urandom(8 * MiB)
    with path.open("r+b") as f:
        f.seek(2048 * 512)
        f.write(payload)
    return payload


def status_of(standalone: Standalone, uid: str, authorization: str | None) -> int:
    """The HTTP status of a command request with this Authorization header (or none)."""
    context = ssl.create_default_context(cafile=str(standalone.ca_file))
    connection = http.client.HTTPSConnection(
        "127.0.0.1", standalone.agent_port, context=context, timeout=30
    )
    try:
        headers = {"Authorization": authorization} if authorization is not None else {}
        connection.request("GET", f"/v1/hosts/{uid}/command", headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def wait_until(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def lookup_when_known(standalone: Standalone, mac: str) -> Any:
    def attempt() -> Any:
        try:
            return standalone.client().lookup([mac])
        except AgentApiError as exc:
            # 404: not seen yet; 403: seen, but not yet where an agent runs (registering)
            if exc.status in (403, 404, 503) or exc.status is None:
                return None
            raise

    return wait_until(f"a host with {mac}", attempt)


def manifests(image_url: str, digest: str, disk: Path, user_data: bytes) -> str:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    def host(name: str, mac: str, **spec: Any) -> dict[str, Any]:
        return {
            "apiVersion": "metal3.io/v1alpha1",
            "kind": "BareMetalHost",
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                # Held in provisioning for minutes: the agent's deploy decides the test.
                "annotations": {"fixture.metal3.io/provision": "steps:600"},
            },
            "spec": {
                "online": True,
                "bootMACAddress": mac,
                "bmc": {"address": f"redfish://127.0.0.1/redfish/v1/Systems/{name}",
                        "credentialsName": "bmc"},
                "inspectionMode": "disabled",
                "automatedCleaningMode": "disabled",
                **spec,
            },
        }  # fmt: skip

    docs = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bmc", "namespace": NAMESPACE},
         "data": {"username": b64(b"admin"), "password": b64(b"bmc-password")}},
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "a-user-data", "namespace": NAMESPACE},
         "data": {"userData": b64(user_data)}},
        host("a", MAC_A,
             image={"url": image_url, "checksum": digest, "checksumType": "sha256",
                    "format": "raw"},
             rootDeviceHints={"deviceName": str(disk)},
             userData={"name": "a-user-data"}),
        host("b", MAC_B),
    ]  # fmt: skip
    return yaml.safe_dump_all(docs)


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Standalone]:
    process = Standalone(tmp_path / "standalone", free_port())
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_agent_against_standalone_across_an_operator_kill(
    standalone: Standalone, tmp_path: Path, loop_devices: LoopDevices
) -> None:
    image = tmp_path / "disk.raw"
    payload = make_image(image)
    digest = sh("sha256sum", image).split()[0]
    disk = loop_devices.new(128 * MiB)
    user_data = b"#cloud-config\n# protocol-test " + secrets.token_hex(16).encode() + b"\n"

    with HeldImageServer(image, hold_at=6 * MiB) as images:
        standalone.kubectl("create", "namespace", NAMESPACE)
        standalone.kubectl(
            "apply", "-f", "-", stdin=manifests(images.url, digest, disk.path, user_data)
        )

        # Unknown MACs: 404. Host b: the token on the first lookup only.
        with pytest.raises(AgentApiError) as unknown:
            standalone.client().lookup(["52:54:00:00:00:99"])
        assert unknown.value.status == 404
        found_b = lookup_when_known(standalone, MAC_B)
        assert found_b.name == "b" and found_b.token is not None
        token_b = found_b.token
        assert standalone.client().lookup([MAC_B]).token is None

        # The agent of host a, as a process with its own state directory.
        state_dir = tmp_path / "agent-state"
        agent_log = (tmp_path / "agent.log").open("w+")
        agent = subprocess.Popen(
            [sys.executable, "-m", "metal3.agent.runner", "--api", standalone.agent_url,
             "--ca-file", str(standalone.ca_file), "--state-dir", str(state_dir),
             "--mac", MAC_A, "--max-commands", "1", "--log-level", "DEBUG"],
            stdout=agent_log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            state_file = state_dir / "agent-state.json"
            state = wait_until("the agent's token", lambda: state_file.exists() and json.loads(
                state_file.read_text()))  # fmt: skip
            token_a, uid_a = state["token"], state["host_uid"]
            assert len(token_a) == 43
            assert state_file.stat().st_mode & 0o077 == 0  # the token is kept owner-only
            assert standalone.client().lookup([MAC_A]).token is None  # given once, to the agent

            # Missing, malformed, wrong and other hosts' tokens are refused.
            cases = [
                (uid_a, None, 401),
                (uid_a, "Bearer not-a-token", 401),
                (uid_a, "Bearer " + "Z" * 43, 403),
                (uid_a, f"Bearer {token_b}", 403),
                (found_b.uid, f"Bearer {token_a}", 403),
                (found_b.uid, f"Bearer {token_b}", 200),
            ]
            for uid, header, expected in cases:
                assert status_of(standalone, uid, header) == expected, (uid, header)

            # The deploy is under way (6 of 16 MiB sent): kill the operator, start it again.
            assert images.reached.wait(timeout=120), "the agent never fetched the image"
            standalone.kill()
            standalone.start()
            images.release()
            assert agent.wait(timeout=180) == 0
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
            agent_log.seek(0)
            agent_output = agent_log.read()
            agent_log.close()

        # Recorded once, in the host's agent record, with the deploy's timings.
        secret = json.loads(
            standalone.kubectl("get", "secret", "-n", NAMESPACE, "metal3-agent-a", "-o", "json")
        )
        results = {
            key.removeprefix("result."): json.loads(base64.b64decode(value))
            for key, value in secret["data"].items()
            if key.startswith("result.")
        }
        assert len(results) == 1, results
        ((deploy_id, recorded),) = results.items()
        assert deploy_id.startswith("deploy-")
        assert recorded["command"] == "deploy" and recorded["status"] == "succeeded", recorded
        outcome = recorded["result"]
        assert outcome["verified"] is True
        assert outcome["digest"] == digest
        assert outcome["disk"] == str(disk.path)
        assert set(outcome["timings"]) >= {"write_verify", "configdrive", "sync", "total"}
        # The image was streamed once: the deploy was never restarted. (The deploy's format
        # probe may read the image's start on its own GET before the stream.)
        assert (images.streams, images.complete) == (1, 1), images.gets

    # The image's partition is on the disk, byte for byte.
    with disk.path.open("rb") as device:
        device.seek(2048 * 512)
        assert device.read(len(payload)) == payload

    # A repeat of the result is acknowledged but not recorded again; the agent is told to wait.
    client = standalone.client()
    assert client.post_result(uid_a, token_a, deploy_id, "succeeded", {"again": True}) is False
    assert client.command(uid_a, token_a)["command"] == "wait"
    secret = json.loads(
        standalone.kubectl("get", "secret", "-n", NAMESPACE, "metal3-agent-a", "-o", "json")
    )
    assert json.loads(base64.b64decode(secret["data"][f"result.{deploy_id}"]))["result"] == outcome
    client.close()

    # Across both operator runs and the agent: no token, no user data in any log.
    standalone.stop()
    logs = "".join(standalone.output) + agent_output
    assert "lookup from 127.0.0.1: host agents/a, token issued" in logs
    assert f"{deploy_id} succeeded: recorded" in agent_output
    assert f"refused GET /v1/hosts/{uid_a}/command from 127.0.0.1 (host agents/a)" in logs
    for secret_text in (token_a, token_b, user_data.decode(), base64.b64encode(user_data).decode()):
        assert secret_text.strip() not in logs
    assert "Traceback" not in logs, logs[-5000:]


# --- the runner in-process, against the agent API on a real API server -------------------


@pytest.fixture(scope="module")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("protocol-apiserver") / "data", REPO / "crds", []
    )
    server.start()
    yield server
    server.stop()


@pytest.mark.anyio
async def test_the_runner_never_runs_a_command_twice_and_reports_until_recorded(
    apiserver: ServerProcess, tmp_path: Path
) -> None:
    """An agent restarted after the operator lost a result reports it again instead of
    running the command again; a terminal command is acknowledged, then the agent leaves."""
    inspections: list[int] = []

    def inspect(args: dict[str, Any]) -> dict[str, Any]:
        inspections.append(1)
        return {"hostname": "h1", "cpu": {"count": 2}}

    namespace = f"t-{secrets.token_hex(4)}"
    state_dir = tmp_path / "agent-state"
    async with serving(apiserver.kubeconfig, namespace, tmp_path, poll_seconds=1.0) as h:
        await h.create_host("h1", MAC_A)
        seen = await h.set_status("h1", "inspecting")
        await h.wait_seen("h1", seen["metadata"]["resourceVersion"])

        def runner(**options: Any) -> Runner:
            return Runner(
                RunnerOptions(
                    api_url=h.url, ca_file=h.ca_file, state_dir=state_dir, macs=[MAC_A],
                    handlers={"inspect": inspect}, lookup_interval=0.2, **options,
                )
            )  # fmt: skip

        first = runner(max_commands=1)
        assert await anyio.to_thread.run_sync(first.run) == 0
        first.client.close()
        assert len(inspections) == 1
        host = await h.client.get(BAREMETALHOSTS, namespace, "h1")
        (inspect_id,) = (await AgentRecords(h.client).get(host)).results

        # The operator loses the record (token and result): the agent, restarted, looks up
        # again, is asked for the same inspection, and reports it again without running it.
        await h.client.delete(SECRETS, namespace, "metal3-agent-h1")
        second = runner()
        async with anyio.create_task_group() as tg:
            exit_codes: list[int] = []

            async def run() -> None:
                exit_codes.append(await anyio.to_thread.run_sync(second.run))

            tg.start_soon(run)
            with anyio.fail_after(60):
                while True:
                    record = await AgentRecords(h.client).get(host)
                    if inspect_id in record.results:
                        break
                    await anyio.sleep(0.1)
            await h.set_status("h1", "provisioned")  # now the agent is told to leave
        second.client.close()
        assert exit_codes == [0]
        assert len(inspections) == 1  # never run twice
        record = await AgentRecords(h.client).get(host)
        assert record.results[inspect_id].result == {"hostname": "h1", "cpu": {"count": 2}}
        assert [r.command for r in record.results.values()].count("reboot_to_disk") == 1
        assert record.token_hash == ""  # acknowledged: the token is rotated
        assert h.results == [(namespace, "h1")] * 3  # inspect, inspect again, reboot_to_disk
        state = AgentState.load(state_dir)
        assert all(outcome.acknowledged for outcome in state.outcomes.values())


@pytest.mark.anyio
async def test_a_result_the_operator_cannot_keep_is_reported_as_a_failure(
    apiserver: ServerProcess, tmp_path: Path
) -> None:
    namespace = f"t-{secrets.token_hex(4)}"
    async with serving(apiserver.kubeconfig, namespace, tmp_path, poll_seconds=1.0) as h:
        await h.create_host("h1", MAC_A)
        seen = await h.set_status("h1", "inspecting")
        await h.wait_seen("h1", seen["metadata"]["resourceVersion"])
        runner = Runner(
            RunnerOptions(
                api_url=h.url, ca_file=h.ca_file, state_dir=tmp_path / "state", macs=[MAC_A],
                handlers={"inspect": lambda args: {"blob": "x" * 800 * 1024}}, max_commands=1,
            )
        )  # fmt: skip
        assert await anyio.to_thread.run_sync(runner.run) == 0
        runner.client.close()
        host = await h.client.get(BAREMETALHOSTS, namespace, "h1")
        (recorded,) = (await AgentRecords(h.client).get(host)).results.values()
        assert (recorded.command, recorded.status, recorded.result) == ("inspect", "failed", None)
        assert recorded.error is not None and "result too large" in recorded.error


def test_a_deploy_does_not_wait_for_its_started_report() -> None:
    """A deploy's "started" goes to the operator from the progress thread: the write begins
    while that report is still unanswered (a busy operator), and the report is the first the
    thread sends. Progress is a hint; the write must not wait for it."""
    answer = threading.Event()
    sent: list[tuple[str, int | None]] = []

    class SlowOperator:
        def progress(self, uid: str, token: str, command_id: str, phase: str, *,
                     done_bytes: int | None = None) -> None:  # fmt: skip
            sent.append((phase, done_bytes))
            if not answer.wait(30):
                raise AgentApiError(None, "never answered")

        def close(self) -> None:
            pass

    with DeployProgress(cast(AgentClient, SlowOperator()), "uid", "token", "deploy-1") as p:
        deadline = time.monotonic() + 30
        while not sent and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sent == [("started", None)]
        assert not answer.is_set()  # the write goes on here, the report still unanswered
        p.update(10, 10, 100)
        answer.set()
    assert sent[0] == ("started", None)


def test_at_nice_returns_the_works_value_and_raises_its_error() -> None:
    assert at_nice(19, lambda: threading.current_thread().name) == "agent-work"
    assert at_nice(None, lambda: threading.current_thread().name) == threading.current_thread().name

    def fail() -> None:
        raise AgentError("disk gone")

    with pytest.raises(AgentError, match="disk gone"):
        at_nice(19, fail)


def test_retrying_honours_retry_after_and_gives_up_on_refusals() -> None:
    pauses: list[float] = []
    failures = [
        AgentApiError(None, "down"),
        AgentApiError(429, "slow", 3.0),
        AgentApiError(503, "x"),
    ]

    def call() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    assert retrying(call, "test", sleep=pauses.append, first_delay=0.5) == "done"
    assert pauses == [0.5, 3.0, 2.0]  # backoff, the server's Retry-After, backoff

    def refused() -> str:
        raise AgentApiError(403, "not yours")

    with pytest.raises(AgentApiError, match="not yours"):
        retrying(refused, "test", sleep=pauses.append)


def test_boot_settings_from_the_kernel_command_line(tmp_path: Path) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    cmdline = (
        "BOOT_IMAGE=/vmlinuz ro metal3.agent_api=https://192.0.2.1:9999 "
        f"metal3.agent_ca={base64.b64encode(pem.encode()).decode()} quiet\n"
    )
    settings = settings_from_cmdline(cmdline)
    assert (settings.api_url, settings.ca_data, settings.ca_file) == (
        "https://192.0.2.1:9999",
        pem,
        None,
    )
    assert settings_from_cmdline("metal3.agent_ca_file=/etc/ca.pem").ca_file == "/etc/ca.pem"
    with pytest.raises(AgentError, match="base64"):
        settings_from_cmdline("metal3.agent_ca=%%%")


def test_the_agent_state_is_owner_only_and_survives_a_restart(tmp_path: Path) -> None:
    state = AgentState(host_uid="u1", token="T" * 43)
    state.outcomes["inspect-" + "0" * 24] = Outcome("inspect", "succeeded", {"a": 1})
    state.save(tmp_path / "state")
    path = tmp_path / "state" / "agent-state.json"
    assert path.stat().st_mode & 0o777 == 0o600
    again = AgentState.load(tmp_path / "state")
    assert again == state
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "agent-state.json").write_text("{not json")
    with pytest.raises(AgentError, match="cannot read"):
        AgentState.load(tmp_path / "bad")


def test_local_macs_are_the_machines_as_ip_reports_them() -> None:
    links = json.loads(sh("ip", "-j", "link", "show"))
    expected = sorted(
        {
            link["address"].lower()
            for link in links
            if link.get("link_type") != "loopback"
            and len(link.get("address", "")) == 17
            and link["address"] != "00:00:00:00:00:00"
        }
    )
    assert local_macs() == expected


async def _inspecting_with_agent_booted(h: Harness) -> dict[str, Any]:
    """Host h1 (MAC_A), inspecting, with its agent boot expected (tokens only to booted
    agents, as the direct provisioner runs it)."""
    h.api.agent_boot_required = True
    host = await h.create_host("h1", MAC_A)
    seen = await h.set_status("h1", "inspecting")
    await h.wait_seen("h1", seen["metadata"]["resourceVersion"])
    await h.api.records.expect_agent(host)
    return host


def _inspect_and_clean_agent(h: Harness, state_dir: Path, cleanings: list[int]) -> Runner:
    """An agent for h1 whose inspection reports a hostname and whose cleanings are counted."""
    return Runner(
        RunnerOptions(
            api_url=h.url, ca_file=h.ca_file, state_dir=state_dir, macs=[MAC_A],
            handlers={"inspect": lambda args: {"hostname": "h1"},
                      "clean": lambda args: cleanings.append(1) or {}},
            lookup_interval=0.2,
        )
    )  # fmt: skip


async def _until_recorded(
    h: Harness, host: dict[str, Any], command: str = "", timeout: float = 60
) -> None:
    """Until the host's agent record holds a result (of ``command``, if given)."""
    with anyio.fail_after(timeout):
        while True:
            record = await AgentRecords(h.client).get(host)
            if record.latest(command) if command else record.results:
                return
            await anyio.sleep(0.1)


@pytest.mark.anyio
async def test_the_runner_stops_when_the_operator_ends_its_session(
    apiserver: ServerProcess, tmp_path: Path
) -> None:
    """After its inspection, the agent waits; the provisioner ends its session (the power off
    at the end of inspection) and the host moves on to cleaning: the agent is told its session
    is over and exits without looking up again or cleaning."""
    cleanings: list[int] = []
    namespace = f"t-{secrets.token_hex(4)}"
    async with serving(apiserver.kubeconfig, namespace, tmp_path, poll_seconds=1.0) as h:
        host = await _inspecting_with_agent_booted(h)
        runner = _inspect_and_clean_agent(h, tmp_path / "state", cleanings)
        async with anyio.create_task_group() as tg:
            exit_codes: list[int] = []

            async def run() -> None:
                exit_codes.append(await anyio.to_thread.run_sync(runner.run))

            tg.start_soon(run)
            await _until_recorded(h, host)
            await h.api.records.agent_gone(host)
            await h.set_status("h1", "preparing")
            await h.api.records.expect_agent(host)  # the cleaning boot is on its way
        runner.client.close()
        assert exit_codes == [0]
        assert cleanings == []
        record = await AgentRecords(h.client).get(host)
        assert not record.token_hash  # the lagging agent took no token of the next boot


@pytest.mark.anyio
async def test_a_token_kept_from_an_earlier_boot_is_dropped_and_the_lost_one_reported(
    apiserver: ServerProcess, tmp_path: Path
) -> None:
    """The agent's state folder outlived its boot (the lab keeps it) and holds the inspection
    boot's token, whose session the operator ended; the cleaning boot's token was issued to a
    lookup whose answer was lost (the operator killed mid-lookup). The cleaning boot's agent
    tries the kept token, is told that session is over (410), drops it and looks up again
    saying it holds none, so the operator learns the token was lost (it boots the host again)
    instead of waiting for an agent that exited. Then it takes the next boot's token and does
    the cleaning; a 410 for that token, received in this run, ends it."""
    cleanings: list[int] = []
    namespace = f"t-{secrets.token_hex(4)}"
    state_dir = tmp_path / "state"
    async with serving(apiserver.kubeconfig, namespace, tmp_path, poll_seconds=1.0) as h:
        host = await _inspecting_with_agent_booted(h)
        inspection = _inspect_and_clean_agent(h, state_dir, cleanings)
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, inspection.run)
            await _until_recorded(h, host)
            await h.api.records.agent_gone(host)  # its session ends: it exits
        inspection.client.close()
        assert AgentState.load(state_dir).token  # kept in the state, as the lab keeps it

        await h.set_status("h1", "preparing")
        await h.api.records.expect_agent(host)
        await h.api.records.update(host, lambda r: r.issue_token(new_token()[1]))  # lost
        cleaning = _inspect_and_clean_agent(h, state_dir, cleanings)
        exit_codes: list[int] = []
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                exit_codes.append(await anyio.to_thread.run_sync(cleaning.run))

            tg.start_soon(run)
            with anyio.fail_after(30):
                while not (await AgentRecords(h.client).get(host)).token_lost:
                    await anyio.sleep(0.1)
            assert exit_codes == []  # still looking up, not gone
            assert not AgentState.load(state_dir).token
            # The operator boots the host again: the agent takes the new boot's token.
            await h.api.records.agent_gone(host)
            await h.api.records.expect_agent(host)
            with anyio.fail_after(60):
                while not cleanings:
                    await anyio.sleep(0.1)
            await _until_recorded(h, host, "clean", timeout=30)
            await h.api.records.agent_gone(host)
        cleaning.client.close()
        assert exit_codes == [0]
        assert cleanings == [1]
