"""The `metal3` entry point as a user runs it: the installed console script.

Start-up is on the deploy path, so the modules each command line imports are checked here in a
fresh interpreter (listed when the process exits): `--help`/`--version` import no subcommand,
declaring any subcommand imports none of its heavy dependencies, and `metal3 image write`
imports the image streaming core and nothing else of the package. Timings are
benches/test_bench_cli.py's job.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import metal3
from metal3.cli import NAMES, SUBCOMMANDS, build_parser, command_in

# What a command line must not import before its command runs: the Kubernetes client, HTTP
# frameworks, BMC libraries, TLS, metrics, and the package's controllers and servers.
HEAVY = (
    "kubernetes_asyncio",
    "aiohttp",
    "uvicorn",
    "httptools",
    "sushy",
    "pyghmi",
    "cryptography",
    "requests",
    "prometheus_client",
    "metal3.controllers",
    "metal3.kube",
    "metal3.apiserver",
    "metal3.operator",
    "metal3.standalone",
    "metal3.provisioner.fixture",
    "metal3.bmc.redfish",
    "metal3.bmc.ipmi",
    "metal3.cli.demo_fixture",
    "metal3.cli.demo_lab",
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metal3", *args], capture_output=True, text=True, timeout=60
    )


# The console script's code (`from metal3.cli import main; sys.exit(main())`), reporting at exit
# every module the process imported.
ENTRY_POINT = """
import atexit, sys

def report():
    import json
    sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules)) + "\\n")

atexit.register(report)
from metal3.cli import main
sys.exit(main())
"""


def imported_by(*args: str) -> set[str]:
    """Every module `metal3 ARGS` imports, in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", ENTRY_POINT, *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = result.stderr.rpartition("\nMODULES ")[2]
    modules = set(json.loads(report))
    assert "metal3.cli" in modules
    return modules


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_version_matches_package() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"metal3 {metal3.__version__}"
    assert metal3.__version__ != "0.0.0+unknown"


def test_help_lists_subcommands() -> None:
    result = run("--help")
    assert result.returncode == 0
    listed = " ".join(result.stdout.split())
    for sub in SUBCOMMANDS:
        assert f"{sub.name} {sub.help}" in listed


def test_no_subcommand_is_a_usage_error() -> None:
    result = run()
    assert result.returncode == 2
    assert "usage: metal3" in result.stderr


def test_extension_version_matches_package() -> None:
    from metal3 import _native

    assert _native.__version__ == metal3.__version__


def test_command_in_finds_the_subcommand() -> None:
    assert command_in(["bmc", "redfish://x", "power", "status"]) == "bmc"
    assert command_in(["--help", "image", "write", "--help"]) == "image"
    assert command_in(["--version"]) is None
    assert command_in(["nope", "image"]) is None
    assert command_in([]) is None
    with pytest.raises(ValueError, match="no such subcommand: nope"):
        build_parser(["nope"])


@pytest.mark.parametrize("args", [("--version",), ("--help",)])
def test_top_level_imports_no_subcommand(args: tuple[str, ...]) -> None:
    modules = imported_by(*args)
    assert sorted(m for m in modules if m.startswith("metal3")) == ["metal3", "metal3.cli"]
    assert heavy_in(modules) == []
    assert sorted({"anyio", "yaml", "orjson"} & modules) == []


@pytest.mark.parametrize("name", NAMES)
def test_declaring_a_subcommand_imports_nothing_heavy(name: str) -> None:
    modules = imported_by(name, "--help")
    assert f"metal3.cli.{name}" in modules
    assert heavy_in(modules) == []
    others = {f"metal3.cli.{n}" for n in NAMES} - {f"metal3.cli.{name}"}
    if name == "standalone":  # it shares the operator's options
        others.discard("metal3.cli.operator")
    assert sorted(others & modules) == []


def test_image_write_imports_only_the_image_streaming_core(tmp_path: Path) -> None:
    source = tmp_path / "disk.raw"
    source.write_bytes(os.urandom(1 << 20) + bytes(1 << 20))
    target = tmp_path / "target"
    modules = imported_by("image", "write", str(source), str(target))
    assert target.read_bytes() == source.read_bytes()
    package = sorted(m for m in modules if m.startswith("metal3"))
    assert package == [
        "metal3",
        "metal3._native",
        "metal3.cli",
        "metal3.cli.image",
        "metal3.imagestream",
    ]
    assert heavy_in(modules) == []
    assert sorted({"anyio", "yaml", "orjson", "importlib.metadata"} & modules) == []
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    modules = imported_by("image", "write", str(source), str(target), "--checksum", digest)
    assert heavy_in(modules) == []


def test_operator_defaults_come_from_the_operator() -> None:
    from metal3.cli.operator import options_from
    from metal3.controllers.baremetalhost import Settings
    from metal3.operator import default_concurrency

    parser = build_parser(["operator"])
    options = options_from(parser.parse_args(["operator"]))
    assert options.concurrency == default_concurrency()
    assert options.settings == Settings()
    args = parser.parse_args(["operator", "--concurrency", "3", "--provisioning-limit", "5"])
    options = options_from(args)
    assert options.concurrency == 3
    assert options.settings.provisioning_limit == 5
