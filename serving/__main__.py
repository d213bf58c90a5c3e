"""`python -m serving export|demo-models|serve|up|down|status`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from router.registry.durations import parse_duration
from serving.bundle import BundleError
from serving.launcher import DEFAULT_GRACE_S, ServerError


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _export(args: argparse.Namespace) -> int:
    from serving.export import export_bundle

    fetch_names = args.fetch_names.split(",") if args.fetch_names else None
    meta = export_bundle(
        args.model, args.out, name=args.name, version=args.version, fetch_names=fetch_names
    )
    print(f"exported {meta.name} (version {meta.version}) to {args.out}")
    for spec in meta.feeds:
        print(f"  feed  {spec.name}: {spec.dtype} {list(spec.shape)}")
    for spec in meta.fetches:
        print(f"  fetch {spec.name}: {spec.dtype} {list(spec.shape)} (graph var {spec.var})")
    return 0


def _demo_models(args: argparse.Namespace) -> int:
    from serving.demo_models import build_demo_models

    for bundle, (meta, accuracy) in build_demo_models(args.out).items():
        print(
            f"{bundle}: version {meta.version}, held-out accuracy {accuracy:.3f}",
            f"-> {args.out / bundle}",
        )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from serving.launcher import free_port, port_in_use
    from serving.pipeline_service import ServeOptions, parse_device

    parse_device(args.device)
    for flag, port in (("--http-port", args.http_port), ("--rpc-port", args.rpc_port)):
        if port and not 1024 <= port <= 65535:
            raise ValueError(f"{flag} {port}: Paddle Serving takes ports 1024-65535")
    if not 1 <= args.batch_size < args.rpc_threads:
        # Paddle Serving's docs ask for batch_size < worker_num (its gRPC threads).
        raise ValueError(
            f"--batch-size must be between 1 and --rpc-threads - 1 ({args.rpc_threads - 1})"
        )
    if args.batch_size > 1 and args.concurrency > 1:
        # Seen here: Paddle Serving 0.9.0 stops answering under concurrent load in this setup.
        raise ValueError(
            "--batch-size > 1 needs --concurrency 1 (Paddle Serving 0.9.0 hangs otherwise)"
        )
    workdir = (
        args.workdir or Path("run/serving") / f"{args.model.name}-{args.http_port}"
    ).resolve()
    if not args.worker:
        # Checked here, before anything starts: one line instead of the worker's traceback.
        for flag, port in (("--http-port", args.http_port), ("--rpc-port", args.rpc_port)):
            if port and port_in_use(port):
                raise ServerError(f"port {port} is already in use: choose another with {flag}")
        return _supervise(args, workdir, args.rpc_port or free_port())
    from serving.draining import serve_until_drained

    options = ServeOptions(
        bundle_dir=args.model,
        http_port=args.http_port,
        rpc_port=args.rpc_port,
        device=args.device,
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        batch_timeout_ms=args.batch_timeout_ms,
        cpu_threads=args.cpu_threads,
        rpc_threads=args.rpc_threads,
    )
    serve_until_drained(options, workdir, args.grace)
    return 0


def _supervise(args: argparse.Namespace, workdir: Path, rpc_port: int) -> int:
    """This process supervises; the same command with --worker runs Paddle Serving."""
    from serving.supervisor import supervise

    worker = [
        sys.executable, "-m", "serving", "serve", "--worker",
        "--model", str(args.model.resolve()),
        "--http-port", str(args.http_port),
        "--rpc-port", str(rpc_port),
        "--device", args.device,
        "--concurrency", str(args.concurrency),
        "--batch-size", str(args.batch_size),
        "--batch-timeout-ms", str(args.batch_timeout_ms),
        "--cpu-threads", str(args.cpu_threads),
        "--rpc-threads", str(args.rpc_threads),
        "--workdir", str(workdir),
        "--grace", str(args.grace),
    ]  # fmt: skip
    return supervise(worker, args.grace)


def _fleet(args: argparse.Namespace) -> int:
    from serving import fleet

    return fleet.run_command(
        args.command, args.config, args.run_dir, args.backend or None, args.device, args.grace
    )


def _systemd(args: argparse.Namespace) -> int:
    from serving import fleet

    servers = fleet.local_servers(args.config, args.backend or None, args.device)
    run_dir = (args.run_dir or fleet.default_run_dir(args.config)).resolve()
    for unit in fleet.write_systemd_units(servers, args.out, run_dir, args.grace):
        print(f"wrote {unit}")
    print("then: systemctl daemon-reload && systemctl enable --now paddle-serving-<backend>-<port>")
    return 0


def _add_grace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--grace",
        type=_duration,
        default=DEFAULT_GRACE_S,
        metavar="DURATION",
        help="on SIGTERM, how long requests in flight may take to finish, e.g. 10s, 500ms "
        f"(default {DEFAULT_GRACE_S:g}s); then whatever is left is killed",
    )


RUN_DIR_HELP = "pid files and logs (default: run/ beside the registry file)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser("export", help="paddle.jit.save prefix -> Paddle Serving bundle")
    export.add_argument("--model", type=Path, required=True, help="prefix given to paddle.jit.save")
    export.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    export.add_argument(
        "--name", help="service name, served at /<name>/prediction (default: prefix name)"
    )
    export.add_argument("--version", default="1", help="model version reported to clients")
    export.add_argument("--fetch-names", help="comma-separated client names for the model outputs")
    export.set_defaults(run=_export)

    demo = commands.add_parser("demo-models", help="train and export the two demo sentiment models")
    demo.add_argument("--out", type=Path, required=True)
    demo.set_defaults(run=_demo_models)

    serve = commands.add_parser(
        "serve", help="one pipeline server for one bundle, in the foreground"
    )
    serve.add_argument("--model", type=Path, required=True, help="bundle directory")
    serve.add_argument("--http-port", type=int, required=True)
    serve.add_argument("--rpc-port", type=int, default=0, help="gRPC port (default: a free one)")
    serve.add_argument("--device", default="cpu", help="cpu or gpu:N")
    serve.add_argument("--concurrency", type=int, default=1, help="predictor threads")
    serve.add_argument("--batch-size", type=int, default=1, help=">1 enables auto-batching")
    serve.add_argument("--batch-timeout-ms", type=int, default=2, help="auto-batching wait")
    serve.add_argument("--cpu-threads", type=int, default=1, help="math threads per predictor")
    serve.add_argument(
        "--rpc-threads", type=int, default=32, help="gRPC threads (requests in flight)"
    )
    serve.add_argument("--workdir", type=Path, help="where Paddle Serving writes its logs")
    _add_grace(serve)
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(run=_serve)

    for name, text in (
        ("up", "start every backend of the registry that has a local model"),
        ("down", "stop the backends started by `up`"),
        ("status", "report the backends: pid, endpoint, ready"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", type=Path, default=Path("experiments.yaml"))
        sub.add_argument("--run-dir", type=Path, help=RUN_DIR_HELP)
        sub.add_argument("--backend", action="append", help="only this backend (repeatable)")
        sub.add_argument("--device", help="override every backend's device (cpu, gpu:N)")
        if name == "up":
            _add_grace(sub)
        sub.set_defaults(run=_fleet, grace=DEFAULT_GRACE_S)
    units = commands.add_parser("systemd", help="write a systemd unit per local backend endpoint")
    units.add_argument("--config", type=Path, default=Path("experiments.yaml"))
    units.add_argument("--out", type=Path, required=True, help="e.g. /etc/systemd/system")
    units.add_argument("--run-dir", type=Path, help=RUN_DIR_HELP)
    units.add_argument("--backend", action="append", help="only this backend (repeatable)")
    units.add_argument("--device", help="override every backend's device (cpu, gpu:N)")
    _add_grace(units)
    units.set_defaults(run=_systemd)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except (BundleError, ServerError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
