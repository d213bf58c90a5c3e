"""`python -m router [--config F] [--host H] [--port P] [--workers N]`, `... check`,
`... assign`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional, TextIO

from router.experiment.assign import compile_plans
from router.registry.loading import ConfigError, load_config
from router.registry.schema import RouterConfig

DEFAULT_CONFIG = Path("experiments.yaml")


def _check(args: argparse.Namespace, config: RouterConfig) -> int:
    experiments = config.experiments
    print(f"{args.config}: ok ({len(config.backends)} backends, {len(experiments)} experiments)")
    for name, experiment in experiments.items():
        arms = ", ".join(f"{arm}={backend}" for arm, backend in experiment.arms())
        print(
            f"  {name}: {experiment.route} traffic {experiment.configured_traffic():g}% "
            f"[{arms}] revision {experiment.revision}"
        )
    return 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _assign(args: argparse.Namespace, config: RouterConfig) -> int:
    if args.experiment not in config.experiments:
        known = ", ".join(config.experiments) or "none"
        print(f"error: unknown experiment '{args.experiment}' (known: {known})", file=sys.stderr)
        return 2
    experiment = config.experiments[args.experiment]
    plan = compile_plans(config.experiments)[args.experiment]
    traffic = experiment.configured_traffic() if args.traffic is None else args.traffic
    assignment = plan.assign(args.unit, traffic)
    result = {
        "experiment": args.experiment,
        "unit": args.unit,
        "bucket": assignment.bucket,
        "variant": assignment.arm.name,
        "backend": assignment.arm.backend,
        "enrolled": assignment.enrolled,
        "traffic": traffic,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print("  ".join(f"{key} {value}" for key, value in result.items()))
    return 0


def _serve(args: argparse.Namespace, config: RouterConfig) -> int:
    from router.guard.runtime import StartRefused
    from router.server import CannotListen, serve, supervise

    host = args.host or config.router.host
    port = config.router.port if args.port is None else args.port
    if args.workers > 1 and args.worker_index is None:
        if config.router.fleet is None:
            print(
                f"error: --workers {args.workers} needs router.fleet (a Redis the workers "
                "share); see docs/router.md",
                file=sys.stderr,
            )
            return 2
        try:
            return supervise(args.workers, host, port, lambda i, p: _worker_command(args, i, p))
        except CannotListen as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    try:
        import uvloop
    except ImportError:  # optional: plain asyncio works, a little slower
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(
            serve(
                config, args.config, host, port, watch=not args.no_watch, worker=args.worker_index
            )
        )
    except (CannotListen, StartRefused) as exc:
        # The operator's to fix, not a bug: one line each, no traceback.
        for line in str(exc).splitlines():
            print(f"error: {line}", file=_errors(args))
        return 1
    finally:
        loop.close()
    return 0


def _worker_command(args: argparse.Namespace, index: int, port: int) -> list[str]:
    """The command line of worker `index` of this process, on `port` (picked here for 0)."""
    command = [sys.executable, "-m", "router", "--config", str(args.config), "--port", str(port)]
    if args.host is not None:
        command += ["--host", args.host]
    if args.no_watch:
        command.append("--no-watch")
    command += ["--log-level", args.log_level, "--workers", str(args.workers)]
    return [*command, "--worker-index", str(index), "--supervisor-pid", str(os.getpid())]


def _errors(args: argparse.Namespace) -> TextIO:
    """Where a start failure's lines go: stderr, or for a worker its stdout, a pipe to the
    supervisor, which says them once for all its workers."""
    return sys.stdout if getattr(args, "worker_index", None) is not None else sys.stderr


def _positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m router",
        description="A/B router in front of Paddle Serving. Without a command: run the router.",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the registry")
    parser.add_argument("--host", help="listen address (default: router.host)")
    parser.add_argument("--port", type=int, help="listen port, 0 for any (default: router.port)")
    parser.add_argument(
        "--no-watch", action="store_true", help="reload on SIGHUP only, not on file changes"
    )
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument(
        "--workers", type=_positive, default=1, metavar="N",
        help="N processes serving the port (SO_REUSEPORT), supervised by this one; N > 1 "
        "needs router.fleet (default: 1, no supervisor)",
    )  # fmt: skip
    # Internal: how the supervisor of --workers starts each worker.
    parser.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--supervisor-pid", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(run=_serve)
    commands = parser.add_subparsers(dest="command", metavar="{check,assign}")

    check = commands.add_parser("check", help="validate the registry, print every problem")
    check.add_argument("--config", type=Path, default=argparse.SUPPRESS)
    check.set_defaults(run=_check)

    assign = commands.add_parser("assign", help="which variant a unit gets, and its bucket")
    assign.add_argument("--config", type=Path, default=argparse.SUPPRESS)
    assign.add_argument("--experiment", required=True)
    assign.add_argument("--unit", required=True)
    assign.add_argument(
        "--traffic", type=float, help="assume this traffic instead of the registry's"
    )
    assign.add_argument("--json", action="store_true", help="one JSON object")
    assign.set_defaults(run=_assign)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker_index is not None:
        from router.server import become_worker

        become_worker(args.supervisor_pid)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=_errors(args))
        return 1
    code: int = args.run(args, config)
    return code


if __name__ == "__main__":
    sys.exit(main())
