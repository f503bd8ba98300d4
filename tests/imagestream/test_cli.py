"""`metal3 image info|write` end to end, through the real entry point."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import orjson
import pytest
from imagestream_support import ImageSet, Server, sha256_file

from metal3.cli import main
from metal3.cli.image import ProgressBar


def test_info_text_and_json(images: ImageSet, capsys: pytest.CaptureFixture[str]) -> None:
    image = images.images["qcow2-zlib"]
    assert main(["image", "info", str(image.path)]) == 0
    out = capsys.readouterr().out
    assert "format: qcow2" in out
    assert f"virtual size: {image.virtual_size}" in out
    assert main(["image", "info", "--json", str(image.path)]) == 0
    data = orjson.loads(capsys.readouterr().out)
    assert data["virtual_size"] == image.virtual_size
    assert data["cluster_size"] == 65536
    assert data["compression"] == "zlib"
    assert data["file_size"] == image.path.stat().st_size


def test_write_verified(
    images: ImageSet, http_server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = images.images["qcow2-2m"]
    want = hashlib.sha256(image.path.read_bytes()).hexdigest()
    target = tmp_path / "disk"
    args = ["image", "write", http_server.url(image.path.name), str(target), "--checksum", want]
    assert main([*args, "--progress", "--json"]) == 0
    captured = capsys.readouterr()
    data = orjson.loads(captured.out)
    assert data["verified"] is True
    assert data["digest"] == want
    assert "100.0%" in captured.err
    assert sha256_file(target) == image.reference_sha256


def test_write_mismatch_and_errors(
    images: ImageSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = images.images["raw-gz"]
    target = tmp_path / "disk"
    rc = main(["image", "write", str(image.path), str(target), "--checksum", "0" * 32])
    assert rc == 1
    assert "md5 checksum mismatch" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    rc = main(["image", "write", str(tmp_path / "missing"), str(fresh)])
    assert rc == 1
    assert "cannot open" in capsys.readouterr().err
    assert not fresh.exists(), "a missing source must not leave a target behind"
    rc = main(["image", "write", str(image.path), str(target)])
    assert rc == 0
    assert "NOT verified" in capsys.readouterr().out


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal() -> None:
    term = FakeTerminal()
    bar = ProgressBar(term)
    bar(512 << 20, 256 << 20, 1 << 30)
    bar(1 << 30, 1 << 30, 1 << 30)
    bar.close()
    text = term.getvalue()
    assert text.startswith("\r[###############")
    assert " 50.0% 512.0 MiB/1.0 GiB" in text
    assert "100.0%" in text
    assert text.endswith("\n")
