"""`metal3 demo`: the whole lifecycle on the embedded API server, and its verdict."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metal3", "demo", "--plain", *args],
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_demo_runs_every_example_host_through_its_lifecycle(repo_root: Path) -> None:
    result = demo("--examples", str(repo_root / "examples"))
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for name in ("worker-0", "worker-1", "worker-2", "worker-3", "arm-0", "control-plane-0"):
        assert f"{name:<18} deleted" in out, name
    assert "worker-3           provisioned" in out
    assert "control-plane-0    externally provisioned" in out
    assert "missing-online.yaml" in out and "422 spec.online: Required value" in out
    assert "images written: 5, every host deleted: yes" in out
    assert out.rstrip().endswith("demo: ok")


def test_demo_fails_when_an_invalid_example_is_accepted(repo_root: Path, tmp_path: Path) -> None:
    examples = tmp_path / "examples"
    shutil.copytree(repo_root / "examples", examples)
    fine = (examples / "ipmi.yaml").read_text().split("---\n", 1)[1].replace("worker-0", "x-0")
    (examples / "invalid" / "not-really-invalid.yaml").write_text(fine)
    result = demo("--examples", str(examples), "--timeout", "60")
    assert result.returncode == 1
    assert "not-really-invalid.yaml: ACCEPTED (wrongly)" in result.stdout
    assert "demo: FAILED" in result.stdout


def test_demo_fails_when_a_host_cannot_settle(repo_root: Path, tmp_path: Path) -> None:
    examples = tmp_path / "examples"
    shutil.copytree(repo_root / "examples", examples)
    # A host whose credentials Secret is missing stays in a registration error.
    text = (examples / "redfish.yaml").read_text()
    (examples / "redfish.yaml").write_text(text.split("---\n", 1)[1])
    result = demo("--examples", str(examples), "--timeout", "4")
    assert result.returncode == 1
    assert "timed out" in result.stdout
    assert "demo: FAILED" in result.stdout
