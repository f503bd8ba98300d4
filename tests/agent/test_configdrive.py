"""The config drive image, read back by independent tools: blkid for the label, bsdtar and
isoinfo (libarchive and genisoimage, neither shares code with pycdlib) for the files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from metal3.agent.configdrive import (
    MAX_SIZE,
    ConfigDriveError,
    HostIdentity,
    build_config_drive,
    meta_data_with_defaults,
)

HOST = HostIdentity(uuid="1b2f3c4d-0000-4000-8000-00000000abcd", namespace="lab", name="node-7")
# Every byte value, a CRLF and a NUL run: user data is written byte for byte.
USER_DATA = bytes(range(256)) * 3 + b"#cloud-config\r\nruncmd: [true]\n\x00\x00\x00tail"
NETWORK_DATA = {
    "links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": "52:54:00:12:34:56"}],
    "networks": [{"id": "n0", "link": "eth0", "type": "ipv4_dhcp"}],
    "services": [],
}


def _tool(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "LC_ALL": "C", "BLKID_FILE": "/dev/null"}
    return subprocess.run([str(a) for a in args], capture_output=True, env=env, timeout=60)


def _iso(tmp_path: Path, image: bytes) -> Path:
    path = tmp_path / "config-2.iso"
    path.write_bytes(image)
    return path


def _extract(iso: Path, name: str) -> bytes:
    done = _tool("bsdtar", "-xOf", iso, f"openstack/latest/{name}")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_meta_data_defaults_sit_under_the_users_keys() -> None:
    meta = meta_data_with_defaults(
        HOST,
        {"hostname": "custom.example", "public_keys": {"default": "ssh-ed25519 AAAAC3 u@h"}},
    )
    assert meta == {
        "uuid": HOST.uuid,
        "name": "node-7",
        "hostname": "custom.example",  # the user's value wins
        "metal3-namespace": "lab",
        "metal3-name": "node-7",
        "local-hostname": "node-7",
        "local_hostname": "node-7",
        "public_keys": {"default": "ssh-ed25519 AAAAC3 u@h"},
    }
    assert meta_data_with_defaults(HOST, {"uuid": "other"})["uuid"] == "other"


def test_meta_data_without_a_host_needs_a_uuid() -> None:
    assert meta_data_with_defaults(None, {"uuid": "u-1"}) == {"uuid": "u-1"}
    with pytest.raises(ConfigDriveError, match="uuid"):
        meta_data_with_defaults(None, {"name": "x"})
    with pytest.raises(ConfigDriveError, match="uuid"):
        meta_data_with_defaults(HOST, {"uuid": ""})


@pytest.mark.parametrize(
    "keys", [["ssh-ed25519 AAAA"], "ssh-ed25519 AAAA", {"default": 7}, {1: "ssh-rsa AAAA"}]
)
def test_public_keys_must_map_names_to_keys(keys: object) -> None:
    with pytest.raises(ConfigDriveError, match="public_keys"):
        meta_data_with_defaults(HOST, {"public_keys": keys})


def test_config_drive_reads_back_with_independent_tools(tmp_path: Path) -> None:
    meta = meta_data_with_defaults(HOST, {"public_keys": {"default": "ssh-ed25519 AAAA k@h"}})
    image = build_config_drive(meta_data=meta, user_data=USER_DATA, network_data=NETWORK_DATA)
    iso = _iso(tmp_path, image)

    probe = _tool("blkid", "-p", "-o", "export", iso)
    assert probe.returncode == 0, probe.stderr
    fields = probe.stdout.decode().split("\n")
    assert "LABEL=config-2" in fields
    assert "TYPE=iso9660" in fields

    assert _extract(iso, "user_data") == USER_DATA
    assert json.loads(_extract(iso, "meta_data.json")) == meta
    assert json.loads(_extract(iso, "network_data.json")) == NETWORK_DATA

    wanted = {
        "/openstack",
        "/openstack/latest",
        "/openstack/latest/meta_data.json",
        "/openstack/latest/network_data.json",
        "/openstack/latest/user_data",
    }
    for extension in ("-R", "-J"):  # Rock Ridge and Joliet each give the lowercase names
        listing = _tool("isoinfo", extension, "-f", "-i", iso)
        assert listing.returncode == 0, listing.stderr
        assert set(listing.stdout.decode().split()) == wanted
    plain = _tool("isoinfo", "-f", "-i", iso)  # the ISO 9660 names underneath
    assert "/OPENSTACK/LATEST/USER_DATA.;1" in plain.stdout.decode().split()
    volume = _tool("isoinfo", "-d", "-i", iso).stdout.decode()
    assert "Volume id: config-2" in volume.splitlines()
    assert "Rock Ridge signatures version 1 found" in volume
    assert "Joliet with UCS level 3 found" in volume


def test_files_not_given_are_not_written(tmp_path: Path) -> None:
    iso = _iso(tmp_path, build_config_drive(meta_data={"uuid": "u-2"}))
    listing = _tool("bsdtar", "-tf", iso)
    assert listing.returncode == 0, listing.stderr
    names = {n.rstrip("/") for n in listing.stdout.decode().split()}
    assert names == {".", "openstack", "openstack/latest", "openstack/latest/meta_data.json"}
    assert json.loads(_extract(iso, "meta_data.json")) == {"uuid": "u-2"}


def test_empty_user_data_is_an_empty_file(tmp_path: Path) -> None:
    iso = _iso(tmp_path, build_config_drive(meta_data={"uuid": "u-3"}, user_data=b""))
    assert _extract(iso, "user_data") == b""


def test_data_that_is_not_json_is_refused() -> None:
    with pytest.raises(ConfigDriveError, match="meta data is not JSON"):
        build_config_drive(meta_data={"uuid": "u", "when": object()})
    with pytest.raises(ConfigDriveError, match="network data must be a JSON object"):
        build_config_drive(meta_data={"uuid": "u"}, network_data=["eth0"])  # type: ignore[arg-type]


def test_data_larger_than_the_partition_is_refused() -> None:
    with pytest.raises(ConfigDriveError, match=f"at most {MAX_SIZE}"):
        build_config_drive(meta_data={"uuid": "u"}, user_data=bytes(MAX_SIZE + 1))
