"""`metal3 apiserver`: the embedded Kubernetes-compatible API server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve the Kubernetes REST API for CRDs, their custom resources, Secrets, "
        "ConfigMaps, Namespaces, Events and Leases, stored in SQLite under --data-dir. "
        "Writes DIR/kubeconfig (bearer token, self-signed CA)."
    )
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="state, credentials, kubeconfig"
    )
    parser.add_argument("--listen", default="127.0.0.1:6443", help="HOST:PORT (port 0: any free)")
    parser.add_argument(
        "--crds", type=Path, default=None, help="folder of CRD manifests to preload"
    )
    parser.add_argument(
        "--insecure-http",
        action="store_true",
        help="serve plain HTTP instead of TLS (loopback addresses only)",
    )
    parser.add_argument(
        "--watch-history", type=int, default=10_000, help="changes kept for watch resumption"
    )
    parser.add_argument(
        "--bookmark-interval", type=float, default=60.0, help="seconds between watch BOOKMARKs"
    )
    parser.add_argument(
        "--event-ttl",
        type=float,
        default=3600.0,
        help="seconds an Event lives after its last write",
    )
    # For `metal3 standalone`, which runs the server as its child: serve on an inherited
    # listening socket, and say when ready on an inherited pipe (the URL and a newline).
    parser.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metal3.apiserver.server import ServerConfig, parse_listen, serve

    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.crds is not None and not args.crds.is_dir():
        print(f"error: --crds {args.crds} is not a folder", file=sys.stderr)
        return 2
    if args.watch_history < 1 or args.bookmark_interval <= 0 or args.event_ttl <= 0:
        print(
            "error: --watch-history, --bookmark-interval and --event-ttl must be positive",
            file=sys.stderr,
        )
        return 2
    config = ServerConfig(
        data_dir=args.data_dir,
        host=host,
        port=port,
        crds=args.crds,
        insecure_http=args.insecure_http,
        history=args.watch_history,
        bookmark_interval=args.bookmark_interval,
        event_ttl=args.event_ttl,
        listen_fd=args.listen_fd,
        ready_fd=args.ready_fd,
    )
    return serve(config)
