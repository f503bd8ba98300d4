"""`metal3 demo` runs from a fresh install and fails loudly when an example is wrong."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metal3", "demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_demo_succeeds_on_the_examples(repo_root: Path) -> None:
    result = demo("--examples", str(repo_root / "examples"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 example hosts accepted" in result.stdout
    assert "metal3/worker-3" in result.stdout
    assert "missing-online.yaml: spec.online: Required value" in result.stdout
    assert result.stdout.rstrip().endswith("demo: ok")


def test_demo_fails_when_an_invalid_example_is_accepted(repo_root: Path, tmp_path: Path) -> None:
    examples = tmp_path / "examples"
    shutil.copytree(repo_root / "examples", examples)
    # A "invalid" example that is in fact valid must make the demo fail.
    shutil.copy(examples / "ipmi.yaml", examples / "invalid" / "not-really-invalid.yaml")
    result = demo("--examples", str(examples))
    assert result.returncode == 1
    assert "ACCEPTED (wrongly) not-really-invalid.yaml" in result.stdout


def test_demo_fails_when_a_valid_example_is_refused(repo_root: Path, tmp_path: Path) -> None:
    examples = tmp_path / "examples"
    shutil.copytree(repo_root / "examples", examples)
    text = (examples / "redfish.yaml").read_text().replace("bootMode: UEFI", "bootMode: BIOS")
    (examples / "redfish.yaml").write_text(text)
    result = demo("--examples", str(examples))
    assert result.returncode == 1
    assert "REFUSED redfish.yaml BareMetalHost/worker-1" in result.stdout
