"""`metal3 bmc` against the emulators: every command, credential sources, and `check`."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml

from metal3.bmc.emulators import IPMISimulator, SushyEmulator, free_port
from metal3.cli import main

REDFISH_USER, REDFISH_PASSWORD = "admin", "Redfish-pw-42"
IPMI_USER, IPMI_PASSWORD = "root", "Ipmi-pw-17"


def secret_file(tmp_path: Path, user: str, password: str, *, encoded: bool = True) -> Path:
    if encoded:
        body = {
            "data": {
                "username": base64.b64encode(user.encode()).decode(),
                "password": base64.b64encode(password.encode()).decode(),
            }
        }
    else:
        body = {"stringData": {"username": user, "password": password}}
    manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bmc"}, **body}
    path = tmp_path / "secret.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def password_file(tmp_path: Path, password: str) -> Path:
    path = tmp_path / "password"
    path.write_text(password + "\n")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["bmc", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_redfish_ok(
    redfish: SushyEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = redfish.address(redfish.systems[0], scheme="redfish-virtualmedia")
    code, out, _ = run(
        capsys, address, "--credentials-secret", str(secret_file(tmp_path, *CREDS_RF)), "check"
    )
    assert code == 0
    assert "reachable:   yes" in out
    assert "credentials: accepted for user 'admin'" in out
    assert "boots the agent via virtual-media" in out
    assert "power:       off" in out or "power:       on" in out


CREDS_RF = (REDFISH_USER, REDFISH_PASSWORD)


def test_check_redfish_bad_password(
    redfish: SushyEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = secret_file(tmp_path, REDFISH_USER, "wrong-one\n", encoded=False)
    code, out, err = run(
        capsys, redfish.address(redfish.systems[0]), "--credentials-secret", str(secret), "check"
    )
    assert code == 1
    assert "reachable:   yes (the BMC answered)" in out
    assert "credentials: REJECTED for user 'admin'" in out
    assert "password has leading or trailing whitespace" in out
    assert "wrong-one" not in out + err


def test_check_nothing_listening(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    address = f"redfish+http://127.0.0.1:{free_port()}/redfish/v1/Systems/1"
    code, out, _ = run(
        capsys,
        address,
        "--username",
        "admin",
        "--password-file",
        str(password_file(tmp_path, "pw")),
        "check",
    )
    assert code == 1
    assert "reachable:   NO" in out
    assert "hint:" in out


def test_check_tls_unknown_ca_then_insecure(
    redfish_tls: SushyEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = redfish_tls.address(redfish_tls.systems[0])
    secret = str(secret_file(tmp_path, *CREDS_RF))
    code, out, _ = run(capsys, address, "--credentials-secret", secret, "check")
    assert code == 1
    assert "TLS verification failed" in out
    assert "--insecure" in out
    code, out, _ = run(capsys, address, "--credentials-secret", secret, "--insecure", "check")
    assert code == 0
    assert "credentials: accepted" in out


def test_redfish_commands(
    redfish: SushyEmulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    file_server: tuple[str, Path],
) -> None:
    system = redfish.systems[3]
    common = [
        redfish.address(system),
        "--credentials-secret",
        str(secret_file(tmp_path, *CREDS_RF)),
    ]
    code, out, _ = run(capsys, *common, "power", "status")
    assert code == 0
    assert out.strip() in ("on", "off")

    code, out, _ = run(capsys, *common, "boot", "cd", "--persistent", "--legacy")
    assert code == 0
    assert json.loads(out) == {"device": "cd", "persistent": True, "uefi": False}

    code, out, _ = run(capsys, *common, "inventory")
    assert code == 0
    inventory = json.loads(out)
    assert sorted(nic["mac"] for nic in inventory["nics"]) == sorted(m for m, _ in system.nics)
    assert [d["size_bytes"] for d in inventory["drives"]] == [
        d.capacity_bytes for d in system.drives
    ]

    base_url, root = file_server
    (root / "cli.iso").write_bytes(b"iso")
    code, out, _ = run(capsys, *common, "media", "insert", f"{base_url}/cli.iso")
    assert code == 0
    assert json.loads(out) == {"inserted": True, "image": f"{base_url}/cli.iso"}
    code, out, _ = run(capsys, *common, "media", "eject")
    assert json.loads(out)["inserted"] is False

    code, _, err = run(capsys, *common, "bios")
    assert code == 1
    assert err.startswith("error: unsupported:")


def test_ipmi_commands(
    ipmi_sim: IPMISimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [
        ipmi_sim.address(),
        "--username",
        IPMI_USER,
        "--password-file",
        str(password_file(tmp_path, IPMI_PASSWORD)),
    ]
    code, out, _ = run(capsys, *common, "check")
    assert code == 0, out
    assert "ipmi driver, 127.0.0.1:" in out
    code, out, _ = run(capsys, *common, "power", "on", "--wait", "10")
    assert (code, out.strip()) == (0, "on")
    code, out, _ = run(capsys, *common, "power", "status")
    assert (code, out.strip()) == (0, "on")
    code, out, _ = run(capsys, *common, "power", "off", "--soft-wait", "0", "--wait", "10")
    assert (code, out.strip()) == (0, "off")
    code, out, _ = run(capsys, *common, "boot", "pxe", "--uefi")
    assert json.loads(out) == {"device": "pxe", "persistent": False, "uefi": True}
    code, _, err = run(capsys, *common, "inventory")
    assert code == 1
    assert "not supported by the ipmi driver" in err


def test_ipmi_check_unknown_user(
    ipmi_sim: IPMISimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = secret_file(tmp_path, "ghost", IPMI_PASSWORD)
    code, out, _ = run(capsys, ipmi_sim.address(), "--credentials-secret", str(secret), "check")
    assert code == 1
    assert "credentials: REJECTED for user 'ghost'" in out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["foo://bmc", "--username", "u", "--password-file", "/nonexistent", "check"], "foo"),
        (["ipmi://bmc", "check"], "give --username and --password-file"),
        (
            ["ipmi://bmc", "--username", "u", "--password-file", "/nonexistent/pw", "check"],
            "cannot",
        ),
    ],
)
def test_bad_input_exits_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert fragment in err


def test_bad_secret_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("kind: Secret\ndata:\n  username: YWRtaW4=\n")
    code, _, err = run(capsys, "ipmi://bmc", "--credentials-secret", str(path), "check")
    assert code == 2
    assert "missing key(s): password" in err
