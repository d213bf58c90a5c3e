"""`python -m router [--config F] [--host H] [--port P]`, `... check`, `... assign`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Optional

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
    from router.server import CannotListen, serve

    try:
        import uvloop
    except ImportError:  # optional: plain asyncio works, a little slower
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    host = args.host or config.router.host
    port = config.router.port if args.port is None else args.port
    try:
        loop.run_until_complete(serve(config, args.config, host, port, watch=not args.no_watch))
    except (CannotListen, StartRefused) as exc:
        # The operator's to fix, not a bug: one line each, no traceback.
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    return 0


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
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    code: int = args.run(args, config)
    return code


if __name__ == "__main__":
    sys.exit(main())
