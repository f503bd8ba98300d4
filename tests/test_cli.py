"""The `metal3` entry point as a user runs it: the installed console script."""

from __future__ import annotations

import subprocess
import sys

import metal3


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metal3", *args], capture_output=True, text=True, timeout=60
    )


def test_version_matches_package() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"metal3 {metal3.__version__}"
    assert metal3.__version__ != "0.0.0+unknown"


def test_help_lists_subcommands() -> None:
    from metal3.cli import SUBCOMMANDS

    result = run("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout


def test_no_subcommand_is_a_usage_error() -> None:
    result = run()
    assert result.returncode == 2
    assert "usage: metal3" in result.stderr


def test_extension_version_matches_package() -> None:
    from metal3 import _imagestream

    assert _imagestream.__version__ == metal3.__version__
