"""`metal3 image`: inspect an image, or stream it onto a disk in one pass (info / write).

`metal3 image write` is on the deploy path: of this package it imports only the image streaming
core, and of third-party libraries nothing (orjson only for --json).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="image_command", metavar="ACTION", required=True)

    info = sub.add_parser("info", help="format, virtual size, cluster size, compression")
    info.add_argument("source", help="path or http(s) URL of the image")
    info.add_argument("--json", action="store_true", help="print JSON")
    _tls_options(info)
    info.set_defaults(func=run_info)

    write = sub.add_parser("write", help="stream an image onto a block device or file")
    write.add_argument("source", help="path or http(s) URL of the image")
    write.add_argument("target", help="block device or file (created if missing)")
    write.add_argument("--checksum", help="expected hex digest, or URL of a checksum file")
    write.add_argument(
        "--checksum-type", default="auto", choices=["auto", "md5", "sha256", "sha512"]
    )
    write.add_argument(
        "--format", default="auto", choices=["auto", "raw", "qcow2", "gzip", "xz", "zstd"]
    )
    write.add_argument("--assume-zeroed", action="store_true", help="target already reads as zeros")
    write.add_argument("--progress", action="store_true", help="show progress on stderr")
    write.add_argument("--json", action="store_true", help="print the result as JSON")
    _tls_options(write)
    write.set_defaults(func=run_write)


def _tls_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ca-file", help="PEM bundle of CAs to trust for https")
    parser.add_argument("--insecure", action="store_true", help="do not verify https certificates")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _print_json(fields: dict[str, str | int | bool | None]) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(fields).decode() + "\n")


def run_info(args: argparse.Namespace) -> int:
    from metal3 import imagestream

    try:
        info = imagestream.info(args.source, insecure=args.insecure, ca_file=args.ca_file)
    except (imagestream.ImageStreamError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    fields: dict[str, str | int | bool | None] = {
        "format": info.format,
        "inner_format": info.inner_format,
        "virtual_size": info.virtual_size,
        "cluster_size": info.cluster_size,
        "compression": info.compression,
        "file_size": info.file_size,
        "qcow2_version": info.qcow2_version,
        "extended_l2": info.extended_l2,
    }
    if args.json:
        _print_json(fields)
        return 0
    for key, value in fields.items():
        if value is None or (key == "extended_l2" and not value):
            continue
        shown = (
            f"{value} ({_size(value)})"
            if isinstance(value, int) and key.endswith("size")
            else value
        )
        print(f"{key.replace('_', ' ')}: {shown}")
    return 0


class ProgressBar:
    """A one-line bar on a terminal; occasional plain lines when stderr is not one."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.start = time.monotonic()
        self.last_line = 0.0

    def __call__(self, read: int, written: int, total: int | None) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        rate = f"{_size(read / elapsed)}/s"
        if total:
            frac = min(read / total, 1.0)
            bar = "#" * int(frac * 30)
            text = f"[{bar:<30}] {frac * 100:5.1f}% {_size(read)}/{_size(total)} {rate}"
        else:
            text = f"{_size(read)} read, {_size(written)} written, {rate}"
        if self.tty:
            self.out.write("\r" + text + "\x1b[K")
            self.out.flush()
        elif elapsed - self.last_line >= 5 or (total and read >= total):
            self.last_line = elapsed
            self.out.write(text + "\n")

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")


def run_write(args: argparse.Namespace) -> int:
    from metal3 import imagestream

    bar = ProgressBar(sys.stderr) if args.progress else None
    try:
        result = imagestream.write(
            args.source,
            args.target,
            format=args.format,
            checksum=args.checksum,
            checksum_type=args.checksum_type,
            assume_zeroed=args.assume_zeroed,
            insecure=args.insecure,
            ca_file=args.ca_file,
            progress=bar,
        )
    except imagestream.ChecksumMismatchError as e:
        if bar:
            bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (imagestream.ImageStreamError, ValueError) as e:
        if bar:
            bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if bar:
            bar.close()
        print("interrupted: the target holds an incomplete image", file=sys.stderr)
        return 130
    if bar:
        bar.close()
    if args.json:
        fields: dict[str, str | int | bool | None] = {
            "format": result.format,
            "inner_format": result.inner_format,
            "virtual_size": result.virtual_size,
            "bytes_read": result.bytes_read,
            "checksum_algorithm": result.checksum_algorithm,
            "digest": result.digest,
            "verified": result.verified,
        }
        _print_json(fields)
        return 0
    state = (
        f"{result.checksum_algorithm} verified"
        if result.verified
        else "NOT verified (no checksum given)"
    )
    print(
        f"wrote {result.format} image ({_size(result.virtual_size)} virtual, "
        f"{_size(result.bytes_read)} downloaded) to {args.target}: {state}"
    )
    return 0
