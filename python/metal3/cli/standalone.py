"""`metal3 standalone`: the embedded API server (a child process) and the operator, together."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metal3.cli.operator import (
    add_operator_arguments,
    agent_rate_limit,
    configure_logging,
    lab_agent_api,
    load_lab,
    options_from,
    stop_on_signals,
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, required=True, help="state, certs, kubeconfig")
    parser.add_argument("--listen", default="127.0.0.1:6443", help="HOST:PORT of the API server")
    add_operator_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import anyio

    from metal3.agentapi.server import parse_listen as parse_agent_listen
    from metal3.apiserver.server import parse_listen
    from metal3.standalone import ApiServerError, Standalone, StandaloneOptions

    configure_logging(args.log_level)
    host, port = parse_listen(args.listen)
    try:
        if args.agent_listen is not None:
            parse_agent_listen(args.agent_listen)
        lab = load_lab(args)
        operator = options_from(
            args, lab, agent_api=lab_agent_api(lab, args) if lab is not None else None
        )
    except ValueError as exc:
        print(f"metal3 standalone: error: {exc}", file=sys.stderr)
        return 2
    standalone = Standalone(
        StandaloneOptions(
            data_dir=args.data_dir,
            host=host,
            port=port,
            operator=operator,
            agent_listen=args.agent_listen,
            agent_rate_limit=agent_rate_limit(args),
        )
    )

    async def announce() -> None:
        await standalone.ready.wait()
        print(f"metal3 standalone: API server at {standalone.url}", flush=True)
        print(f"kubeconfig: {standalone.kubeconfig}", flush=True)
        print(f"  KUBECONFIG={standalone.kubeconfig} kubectl get bmh -A", flush=True)
        if standalone.agent_url:
            print(
                f"agent API at {standalone.agent_url} (agents trust CA {standalone.agent_ca})",
                flush=True,
            )

    async def main() -> None:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_on_signals, stop, tg.cancel_scope)
            tg.start_soon(announce)
            await standalone.run(stop)
            tg.cancel_scope.cancel()

    code = 0
    try:
        anyio.run(main)
    except* (ApiServerError, OSError) as failed:  # the server did not start, or ended
        for error in failed.exceptions:
            print(f"metal3 standalone: error: {error}", file=sys.stderr)
        code = 1
    return code
