"""One-pass image streaming against the ceilings of this machine and against the IPA path.

A GPT disk holding an ext4 filesystem of real files (random and text) is served by nginx on
127.0.0.1 in each format; we stream it with sha256 verification onto a loop device in direct-I/O
mode (a buffered loop device is measured beside it). In the same run we measure the ceilings
(one HTTP stream, sha256 with SHA extensions, large O_DIRECT writes to the target) and the
baselines (the IPA path: download with hashing to tmpfs, then `qemu-img convert` with IPA's
flags; `qemu-img convert` reading the URL; `qemu-img convert -W` of the local files).
Without loop devices the benchmarks fail. A baseline command that hangs or fails is a finding
(reported as e.g. "qemu-img URL: hung 3/3"), not a failed run; our own writer failing fails it.
Figures and ratios are printed at the end and kept in each benchmark's extra_info. Full mode:
a 4 GiB-virtual disk with ~2.1 GB of data (`./dev bench`); quick mode (METAL3_BENCH_QUICK=1): a
64 MiB disk, seconds in all.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from loopdev import LoopDevice, attached
from metal3 import imagestream

QUICK = os.environ.get("METAL3_BENCH_QUICK") == "1"
MiB = 1 << 20
VIRTUAL = 64 * MiB if QUICK else 4096 * MiB
RANDOM_BYTES = 12 * MiB if QUICK else 1300 * MiB
TEXT_BYTES = 8 * MiB if QUICK else 800 * MiB
ROUNDS = 1 if QUICK else 3

FIGURES: dict[str, float] = {}
NOTES: dict[str, str] = {}
# qemu-img's output format for the targets, which are always loop devices.
QEMU_TARGET_FORMAT = "host_device"


@dataclass
class Disk:
    root: Path
    raw: Path
    raw_sha256: str
    files: dict[str, Path] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    # Bytes the write stage really has to write (allocated, non-zero data), per variant.
    data_bytes: dict[str, int] = field(default_factory=dict)


def _sha256(path: Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    left = limit if limit is not None else 1 << 62
    with path.open("rb") as f:
        while left > 0:
            block = f.read(min(8 * MiB, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def _run(*args: str | Path) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True)


def _fill(tree: Path) -> None:
    rng = random.Random(7)
    left = RANDOM_BYTES
    i = 0
    while left > 0:
        n = min(left, 64 * MiB)
        (tree / f"blob{i}.bin").write_bytes(rng.randbytes(n))
        left -= n
        i += 1
    words = [rng.randbytes(6).hex() for _ in range(5000)]
    line_block = "\n".join(" ".join(rng.choices(words, k=12)) for _ in range(20000)).encode()
    left = TEXT_BYTES
    i = 0
    while left > 0:
        n = min(left, 32 * MiB)
        reps = line_block * (n // len(line_block) + 1)
        (tree / f"text{i}.log").write_bytes(reps[:n])
        left -= n
        i += 1


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Disk:
    root = tmp_path_factory.mktemp("bench-image")
    tree = root / "tree"
    tree.mkdir()
    _fill(tree)
    raw = root / "disk.raw"
    with raw.open("wb") as f:
        f.truncate(VIRTUAL)
    subprocess.run(
        ["sfdisk", "-q", str(raw)],
        input="label: gpt\nstart=2048, type=linux\n",
        text=True,
        check=True,
        capture_output=True,
    )
    part_bytes = VIRTUAL - MiB - MiB  # leave room for the backup GPT
    _run("mkfs.ext4", "-q", "-F", "-E", f"offset={MiB}", "-d", tree, raw, f"{part_bytes // 1024}k")
    shutil.rmtree(tree)
    d = Disk(root, raw, _sha256(raw))
    convert = ["qemu-img", "convert", "-f", "raw", "-O", "qcow2"]
    d.files["raw"] = raw
    variants = {
        "qcow2-64k": [],
        "qcow2-2m": ["-o", "cluster_size=2M"],
        "qcow2-zlib": ["-c"],
        "qcow2-zstd": ["-c", "-o", "compression_type=zstd"],
    }
    for name, opts in variants.items():
        out = root / f"{name}.qcow2"
        _run(*convert, "-m", "2", *opts, raw, out)
        d.files[name] = out
    _run("zstd", "-q", "-T2", "-3", "-k", raw)
    d.files["raw-zst"] = root / "disk.raw.zst"
    _run("gzip", "-k", "-1", raw)
    d.files["raw-gz"] = root / "disk.raw.gz"
    _run("xz", "-k", "-0", "-T2", raw)
    d.files["raw-xz"] = root / "disk.raw.xz"
    for name, path in d.files.items():
        d.sha256[name] = _sha256(path)
    for name, fmt in (("raw", "raw"), ("qcow2-64k", "qcow2")):
        d.data_bytes[name] = _data_bytes(d.files[name], fmt)
    return d


def _data_bytes(path: Path, fmt: str) -> int:
    """Guest bytes holding data (not holes, not zero clusters), from `qemu-img map`."""
    out = subprocess.run(
        ["qemu-img", "map", "--output=json", "-f", fmt, str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return sum(e["length"] for e in json.loads(out) if e["data"] and not e.get("zero", False))


NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
error_log {run}/error.log;
pid {run}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def base_url(disk: Disk, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The images served by nginx (Debian's, unpacked), as a deployment would serve them:
    every client (ours, the IPA path, qemu-img's many range requests) meets the same server."""
    from debian_packages import unpacked

    nginx = unpacked("nginx-debian", ["nginx"], "usr/sbin/nginx") / "usr" / "sbin" / "nginx"
    run = tmp_path_factory.mktemp("nginx")
    for attempt in range(5):
        port = _free_port()
        conf = run / "nginx.conf"
        conf.write_text(NGINX_CONF.format(run=run, port=port, root=disk.root))
        proc = subprocess.Popen(
            [str(nginx), "-p", str(run), "-c", str(conf)], stderr=subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            if proc.poll() is not None:
                break  # the port was taken meanwhile: try another
            try:
                with urllib.request.urlopen(f"{url}/disk.raw.gz", timeout=1) as r:
                    r.read(1)
                break
            except OSError:
                time.sleep(0.05)
        if proc.poll() is None:
            try:
                yield url
            finally:
                proc.terminate()
                proc.wait(10)
            return
        assert attempt < 4, (run / "error.log").read_text()


def _backing_file(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    backing = tmp_path_factory.mktemp(name) / "disk"
    with backing.open("wb") as f:
        os.posix_fallocate(f.fileno(), 0, VIRTUAL)
    return backing


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopDevice]:
    """A loop device in direct-I/O mode over a preallocated file: like a disk, a write is on
    the backing store when it completes, so fsync has little left to do. Without one the
    benchmarks fail: a plain file would measure other code paths."""
    with attached(_backing_file(tmp_path_factory, "bench-target"), direct_io=True) as dev:
        NOTES["target"] = "loop device, direct I/O"
        yield dev


@pytest.fixture(scope="module")
def buffered_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopDevice]:
    """A loop device in its default buffered mode: writes land in the host's page cache and
    the final fsync pays for writing them back, a cost a real disk does not have."""
    with attached(_backing_file(tmp_path_factory, "bench-buffered")) as dev:
        yield dev


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _best(fn: Callable[[], Any]) -> float:
    return min(_timed(fn) for _ in range(ROUNDS))


def test_ceilings(benchmark: Any, disk: Disk, base_url: str, target: LoopDevice) -> None:
    """HTTP one stream, sha256 (OpenSSL with SHA extensions), large writes to the target."""
    qcow = disk.files["qcow2-64k"]
    size = qcow.stat().st_size

    def http_read() -> None:
        """One GET read from the socket into a large buffer: the transfer, with no client
        overhead (curl's small reads make it slower than our own reader against nginx)."""
        parts = urllib.parse.urlsplit(f"{base_url}/{qcow.name}")
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        buf = memoryview(bytearray(8 * MiB))
        received = 0
        with socket.create_connection((host, port)) as sock:
            request = f"GET {parts.path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            sock.sendall(request.encode())
            while n := sock.recv_into(buf):
                received += n
        assert received > size

    def write_raw() -> None:
        """Large aligned O_DIRECT writes of the raw image."""
        block = mmap.mmap(-1, 8 * MiB)  # page-aligned, as O_DIRECT needs
        fd = os.open(target.path, os.O_WRONLY | os.O_DIRECT)
        try:
            with disk.raw.open("rb", buffering=0) as f:
                off = 0
                while n := f.readinto(block):
                    os.pwritev(fd, [memoryview(block)[:n]], off)
                    off += n
            os.fsync(fd)
        finally:
            os.close(fd)
            block.close()

    FIGURES["http_MBps"] = size / _best(http_read) / 1e6
    FIGURES["write_MBps"] = VIRTUAL / _best(write_raw) / 1e6
    sha_time = benchmark.pedantic(lambda: _sha256(qcow), rounds=ROUNDS, iterations=1)
    del sha_time
    FIGURES["sha256_MBps"] = size / benchmark.stats.stats.min / 1e6
    benchmark.extra_info.update(FIGURES)


def write_ours(source: str, target: Path, checksum: str) -> imagestream.WriteResult:
    """Our writer as every benchmark runs it: any failure of it raises and fails the run."""
    result = imagestream.write(source, target, checksum=checksum)
    assert result.verified
    return result


@pytest.mark.parametrize(
    "name",
    ["raw", "qcow2-64k", "qcow2-2m", "qcow2-zlib", "qcow2-zstd", "raw-gz", "raw-xz", "raw-zst"],
)
def test_stream(benchmark: Any, disk: Disk, base_url: str, target: LoopDevice, name: str) -> None:
    """Ours: one GET over HTTP, sha256 verified, written to the target."""
    path = disk.files[name]
    url = f"{base_url}/{path.name}"
    benchmark.pedantic(
        lambda: write_ours(url, target.path, disk.sha256[name]),
        rounds=1 if name == "raw-xz" else ROUNDS,  # xz is slow by nature: one round says enough
        iterations=1,
    )
    assert _sha256(target.path, VIRTUAL) == disk.raw_sha256
    seconds = benchmark.stats.stats.min
    FIGURES[f"ours_{name}_s"] = seconds
    FIGURES[f"ours_{name}_MBps"] = path.stat().st_size / seconds / 1e6
    FIGURES[f"ours_{name}_virtual_MBps"] = VIRTUAL / seconds / 1e6
    if name in disk.data_bytes and "write_MBps" in FIGURES:
        size = path.stat().st_size
        stages = {
            "http": size / FIGURES["http_MBps"] / 1e6,
            "sha256": size / FIGURES["sha256_MBps"] / 1e6,
            "write": disk.data_bytes[name] / FIGURES["write_MBps"] / 1e6,
        }
        slowest = max(stages, key=lambda k: stages[k])
        FIGURES[f"ceiling_{name}_s"] = stages[slowest]
        NOTES[f"ceiling_{name}_stage"] = slowest
    benchmark.extra_info.update(
        file_MBps=FIGURES[f"ours_{name}_MBps"], virtual_MBps=FIGURES[f"ours_{name}_virtual_MBps"]
    )


def test_stream_buffered_loop(
    benchmark: Any, disk: Disk, base_url: str, buffered_target: LoopDevice
) -> None:
    """Ours onto a buffered loop device, for comparison: the same work plus a final fsync
    that writes the host's page cache back to its disk."""
    name = "qcow2-64k"
    url = f"{base_url}/{disk.files[name].name}"
    benchmark.pedantic(
        lambda: write_ours(url, buffered_target.path, disk.sha256[name]),
        rounds=ROUNDS,
        iterations=1,
    )
    assert _sha256(buffered_target.path, VIRTUAL) == disk.raw_sha256
    FIGURES["ours_buffered_loop_qcow2-64k_s"] = benchmark.stats.stats.min


def _qemu_img_with_curl(url: str) -> tuple[str, dict[str, str]]:
    """A qemu-img that can read `url`, and its environment. The installed one when it has the
    curl block driver; else Debian's qemu-utils and qemu-block-extra of one version, unpacked
    (the driver is a module that must match its qemu-img exactly)."""
    probe = subprocess.run(["qemu-img", "info", "-f", "qcow2", url], capture_output=True)
    if probe.returncode == 0:
        return "qemu-img", dict(os.environ)
    from debian_packages import candidate_version, unpacked

    version = candidate_version("qemu-block-extra")
    root = unpacked(
        "qemu-debian",
        [f"qemu-utils={version}", f"qemu-block-extra={version}"],
        "usr/lib/x86_64-linux-gnu/qemu/block-curl.so",
    )
    modules = root / "usr" / "lib" / "x86_64-linux-gnu" / "qemu"
    return str(root / "usr" / "bin" / "qemu-img"), dict(os.environ, QEMU_MODULE_DIR=str(modules))


@dataclass
class BaselineRuns:
    """What a baseline command did: completed runs are timed; runs that hung (killed at the
    timeout) or failed are findings for the summary, not errors of the benchmark run."""

    label: str
    attempts: int = 0
    seconds: list[float] = field(default_factory=list)
    hung: int = 0
    failed: list[str] = field(default_factory=list)  # exit status and last stderr line

    def summary(self) -> str:
        parts = []
        if self.seconds:
            parts.append(f"{min(self.seconds):.2f} s (best of {len(self.seconds)})")
        if self.hung:
            parts.append(f"hung {self.hung}/{self.attempts}")
        if self.failed:
            parts.append(f"failed {len(self.failed)}/{self.attempts} ({self.failed[-1]})")
        return f"{self.label}: {', '.join(parts) or 'not run'}"


def run_baseline(
    label: str,
    command: list[str],
    *,
    runs: int,
    attempts: int,
    timeout: float,
    env: dict[str, str] | None = None,
    check_output: Callable[[], None] | None = None,
) -> BaselineRuns:
    """Runs a baseline `command` until `runs` runs completed or `attempts` were made. A run
    past `timeout` is killed with its whole process group (SIGKILL) and counted as hung; a
    non-zero exit is counted as failed. `check_output` runs after each completed run: it checks
    our harness (the target as a reference tool left it), so its failure does raise."""
    outcome = BaselineRuns(label)
    while len(outcome.seconds) < runs and outcome.attempts < attempts:
        outcome.attempts += 1
        start = time.perf_counter()
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            outcome.hung += 1
            continue
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            lines = stderr.decode(errors="replace").strip().splitlines()
            outcome.failed.append(f"exit {proc.returncode}: {lines[-1] if lines else 'no output'}")
            continue
        if check_output is not None:
            check_output()
        outcome.seconds.append(elapsed)
    return outcome


BASELINES: dict[str, BaselineRuns] = {}


def test_qemu_img_url(disk: Disk, base_url: str, target: LoopDevice) -> None:
    """Baseline: `qemu-img convert` reading the URL itself (Range requests; no checksum).
    qemu's curl driver sometimes hangs (here and under nginx): hung runs are reported."""
    url = f"{base_url}/{disk.files['qcow2-64k'].name}"
    qemu_img, env = _qemu_img_with_curl(url)
    command = [qemu_img, "convert", "-f", "qcow2", "-O", QEMU_TARGET_FORMAT, "-W", url]
    command.append(str(target.path))

    def check_output() -> None:
        assert _sha256(target.path, VIRTUAL) == disk.raw_sha256

    outcome = run_baseline(
        "qemu-img URL",
        command,
        runs=1 if QUICK else 2,
        attempts=3,
        timeout=10 if QUICK else 60,
        env=env,
        check_output=check_output,
    )
    BASELINES["qemu_url"] = outcome
    if outcome.seconds:
        FIGURES["qemu_url_s"] = min(outcome.seconds)


def _ends_within(pid: int, seconds: float) -> bool:
    """Whether process `pid` is gone or a zombie within `seconds` (a killed process closes
    its files a moment before it has finished exiting)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def test_baseline_that_hangs_is_a_finding(tmp_path: Path) -> None:
    """A hanging baseline (a real process that never ends, and a child of it holding its
    stderr) is killed at the timeout and reported as hung; no exception escapes."""
    pids = tmp_path / "pids"
    script = f"sleep 600 & echo $$ $! > {pids}; wait"
    outcome = run_baseline("sleeper", ["sh", "-c", script], runs=1, attempts=3, timeout=0.3)
    assert outcome.summary() == "sleeper: hung 3/3"
    assert (outcome.seconds, outcome.failed) == ([], [])
    shell, child = (int(p) for p in pids.read_text().split())
    assert _ends_within(shell, 10)
    assert _ends_within(child, 10), "the hung command's child was left running"


def test_baseline_that_fails_then_completes_is_reported(tmp_path: Path) -> None:
    """Failed runs are counted with their exit status and last line of stderr; the completed
    run is timed; `check_output` runs after completed runs only."""
    marker = tmp_path / "failed-once"
    script = f"[ -e {marker} ] || {{ touch {marker}; echo 'curl: boom' >&2; exit 3; }}"
    checked: list[int] = []
    outcome = run_baseline(
        "flaky",
        ["sh", "-c", script],
        runs=1,
        attempts=3,
        timeout=30,
        check_output=lambda: checked.append(1),
    )
    assert outcome.attempts == 2
    assert outcome.failed == ["exit 3: curl: boom"]
    assert len(outcome.seconds) == 1
    assert checked == [1]
    assert re.fullmatch(
        r"flaky: \d+\.\d\d s \(best of 1\), failed 1/2 \(exit 3: curl: boom\)", outcome.summary()
    )


def test_own_writer_failure_still_fails(tmp_path: Path) -> None:
    """Our writer, as the benchmarks call it, raises on failure (here: a wrong checksum)."""
    source = tmp_path / "image.raw"
    source.write_bytes(random.Random(3).randbytes(MiB))
    backing = tmp_path / "disk"
    with backing.open("wb") as f:
        f.truncate(MiB)
    with attached(backing) as dev, pytest.raises(imagestream.ChecksumMismatchError):
        write_ours(str(source), dev.path, "0" * 64)


def test_ipa_path(benchmark: Any, disk: Disk, base_url: str, target: LoopDevice) -> None:
    """Baseline: download with hashing to tmpfs, then qemu-img convert with IPA's flags."""
    qcow = disk.files["qcow2-64k"]
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else disk.root
    staged = shm / f"ipa-{os.getpid()}.qcow2"

    def ipa() -> None:
        h = hashlib.sha256()
        with urllib.request.urlopen(f"{base_url}/{qcow.name}") as r, staged.open("wb") as f:
            while block := r.read(MiB):
                h.update(block)
                f.write(block)
        assert h.hexdigest() == disk.sha256["qcow2-64k"]
        _run(
            "qemu-img",
            "convert",
            "-f",
            "qcow2",
            "-O",
            QEMU_TARGET_FORMAT,
            "-t",
            "directsync",
            "-S",
            "0",
            "-W",
            staged,
            target.path,
        )
        staged.unlink()

    benchmark.pedantic(ipa, rounds=1 if QUICK else 2, iterations=1)
    FIGURES["ipa_s"] = benchmark.stats.stats.min


def test_qemu_img_local(benchmark: Any, disk: Disk, target: LoopDevice) -> None:
    """Baselines: `qemu-img convert -W` of the local files (no HTTP, no checksum)."""

    def convert(name: str) -> None:
        qemu_args = ("convert", "-f", "qcow2", "-O", QEMU_TARGET_FORMAT, "-W")
        _run("qemu-img", *qemu_args, disk.files[name], target.path)

    for name in ("qcow2-zlib", "qcow2-zstd"):
        FIGURES[f"qemu_local_{name}_s"] = _best(lambda n=name: convert(n))
    benchmark.pedantic(lambda: convert("qcow2-64k"), rounds=ROUNDS, iterations=1)
    FIGURES["qemu_local_qcow2-64k_s"] = benchmark.stats.stats.min


def test_peak_rss(benchmark: Any, disk: Disk, base_url: str, target: LoopDevice) -> None:
    """Peak RSS of a fresh interpreter streaming a qcow2, above its own baseline."""
    # VmHWM is reset (clear_refs 5) after imports, so the peak is the write's own.
    code = (
        "import sys\n"
        "from metal3 import imagestream\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key):\n"
        "            return int(line.split()[1])\n"
        "base = status('VmRSS:')\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "r = imagestream.write(sys.argv[1], sys.argv[2], checksum=sys.argv[3])\n"
        "peak = status('VmHWM:')\n"
        "print(base, peak, r.verified)\n"
    )

    def run(name: str) -> float:
        url = f"{base_url}/{disk.files[name].name}"
        base, peak, verified = subprocess.run(
            [sys.executable, "-c", code, url, str(target.path), disk.sha256[name]],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        assert verified == "True"
        return (int(peak) - int(base)) / 1024

    FIGURES["rss_above_baseline_zstd_MiB"] = run("qcow2-zstd")
    FIGURES["rss_above_baseline_MiB"] = benchmark.pedantic(
        lambda: run("qcow2-64k"), rounds=1, iterations=1
    )
    benchmark.extra_info["rss_above_baseline_MiB"] = FIGURES["rss_above_baseline_MiB"]


def test_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints the figures and the ratios the issue asks for."""
    f = FIGURES
    lines = [
        f"imagestream figures ({'quick' if QUICK else 'full'} mode, target: "
        f"{NOTES.get('target', '?')}, virtual {VIRTUAL // MiB} MiB)"
    ]
    for key in ("http_MBps", "sha256_MBps", "write_MBps"):
        if key in f:
            lines.append(f"  ceiling {key:<28} {f[key]:10.0f}")
    for key, value in sorted(f.items()):
        if key.startswith("ours_") and key.endswith("_MBps") and "virtual" not in key:
            name = key[5:-5]
            lines.append(
                f"  ours {name:<12} {value:8.0f} MB/s of file, "
                f"{f[f'ours_{name}_virtual_MBps']:8.0f} MB/s of disk, {f[f'ours_{name}_s']:.2f} s"
            )
    q = f.get("ours_qcow2-64k_s")
    if q:
        if "ipa_s" in f:
            lines.append(f"  IPA path / ours (qcow2 64k):        {f['ipa_s'] / q:6.2f}x")
        if "qemu_url_s" in f:
            lines.append(f"  qemu-img from URL / ours (qcow2 64k): {f['qemu_url_s'] / q:5.2f}x")
        buffered = f.get("ours_buffered_loop_qcow2-64k_s")
        if buffered:
            lines.append(f"  ours onto a buffered loop device:    {buffered:.2f} s")
        for name in ("qcow2-64k", "raw"):
            # The ceiling in consistent units: every byte of the file goes through HTTP and
            # sha256 (file bytes / MB/s of file), only the data bytes need writing (the rest
            # is zeroed without writing; data bytes / MB/s of disk). The slowest stage sets
            # the ceiling time; ours reaches `ceiling time / our time` of it.
            if f"ceiling_{name}_s" in f and f"ours_{name}_s" in f:
                lines.append(
                    f"  ours / ceiling ({name:<9}):          "
                    f"{f[f'ceiling_{name}_s'] / f[f'ours_{name}_s']:6.2f} "
                    f"(ceiling {f[f'ceiling_{name}_s']:.2f} s, slowest stage: "
                    f"{NOTES.get(f'ceiling_{name}_stage', '?')})"
                )
        if "qemu_local_qcow2-64k_s" in f:
            lines.append(
                f"  qemu-img local / ours (qcow2 64k):   {f['qemu_local_qcow2-64k_s'] / q:6.2f}x"
            )
    for name in ("qcow2-zlib", "qcow2-zstd"):
        if f"qemu_local_{name}_s" in f and f"ours_{name}_s" in f:
            lines.append(
                f"  qemu-img -W local / ours ({name}): "
                f"{f[f'qemu_local_{name}_s'] / f[f'ours_{name}_s']:6.2f}x"
            )
    if "rss_above_baseline_MiB" in f:
        lines.append(
            f"  peak RSS above baseline: {f['rss_above_baseline_MiB']:.1f} MiB (qcow2 64k), "
            f"{f['rss_above_baseline_zstd_MiB']:.1f} MiB (zstd qcow2)"
        )
    lines.extend(f"  {outcome.summary()}" for outcome in BASELINES.values())
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert all(v >= 0 for v in f.values())
