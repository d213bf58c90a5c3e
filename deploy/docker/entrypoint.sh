#!/usr/bin/env bash
# The image's one entry point: the router, a Paddle Serving node, or a tool beside them.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: paddle-ab COMMAND [ARGS...]

The paddle-ab image's entry point (also runs from a checkout: PADDLE_AB_HOME=/path/to/repo).

  router [ARGS...]        the experiment router: python -m router --config $PADDLE_AB_CONFIG
                          (default /etc/paddle-ab/experiments.yaml) ARGS...
  serving --model DIR --http-port PORT [ARGS...]
                          one Paddle Serving pipeline server for one bundle, in the foreground
                          (python -m serving serve; its working files go to --workdir, default
                          /tmp/serving, so the image's own files may stay read-only)
  probe --model DIR --http-port PORT
                          exit 0 when the server on PORT answers a real prediction for the
                          bundle in DIR (a readiness probe), 1 otherwise
  wait-bundle DIR [SECONDS]
                          wait until DIR/bundle.json exists (default: 600 s; an init step)
  demo-models --out DIR   train and export the two demo sentiment bundles into DIR
  export ARGS...          python -m serving export ARGS... (a bundle from paddle.jit.save)
  analysis ARGS...        python -m analysis ARGS... (e.g. report --logs DIR [DIR ...])
  -h, --help              this text

The image carries no model: bundles come from a volume (e.g. /models) or an init step.
USAGE
}

home="${PADDLE_AB_HOME:-/opt/paddle-ab}"
python="${home}/.venv/bin/python"
[ $# -ge 1 ] || { usage >&2; exit 2; }
command="$1"
shift

case "$command" in
  -h|--help) usage; exit 0 ;;
  router)
    cd "$home"
    exec "$python" -m router --config "${PADDLE_AB_CONFIG:-/etc/paddle-ab/experiments.yaml}" "$@" ;;
  serving)
    workdir="${SERVING_WORKDIR:-/tmp/serving}"
    mkdir -p "$workdir"
    # Paddle Serving writes ProcessInfo.json and PipelineServingLogs/ under SERVING_HOME (by
    # default its working directory): keep them out of the image's read-only files.
    export SERVING_HOME="${SERVING_HOME:-$workdir}"
    mkdir -p "$SERVING_HOME"
    cd "$home"
    # --workdir first: a --workdir among ARGS comes later and wins.
    exec "$python" -m serving serve --workdir "$workdir" "$@" ;;
  probe)
    cd "$home"
    exec "$python" - "$@" <<'PROBE'
import argparse
import sys
from pathlib import Path

from serving.bundle import BundleError, read_bundle
from serving.launcher import is_ready

parser = argparse.ArgumentParser(prog="paddle-ab probe")
parser.add_argument("--model", type=Path, required=True)
parser.add_argument("--http-port", type=int, required=True)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--timeout", type=float, default=2.0)
args = parser.parse_args()
try:
    meta = read_bundle(args.model)
except BundleError as exc:
    sys.exit(f"probe: {exc}")
if not is_ready(f"http://{args.host}:{args.http_port}", meta, args.timeout):
    sys.exit(f"probe: no prediction from {args.host}:{args.http_port} for {meta.name}")
PROBE
    ;;
  wait-bundle)
    [ $# -ge 1 ] || { echo "paddle-ab wait-bundle: needs a bundle directory" >&2; exit 2; }
    dir="$1"
    limit="${2:-600}"
    [[ "$limit" =~ ^[0-9]+$ ]] || { echo "paddle-ab wait-bundle: SECONDS must be a whole number" >&2; exit 2; }
    waited=0
    until [ -f "$dir/bundle.json" ]; do
      if [ "$waited" -ge "$limit" ]; then
        echo "paddle-ab wait-bundle: no bundle at $dir after ${limit}s" >&2
        exit 1
      fi
      [ $((waited % 30)) -ne 0 ] || echo "paddle-ab wait-bundle: waiting for $dir/bundle.json"
      sleep 1
      waited=$((waited + 1))
    done ;;
  demo-models)
    cd "$home"
    exec "$python" -m serving demo-models "$@" ;;
  export)
    cd "$home"
    exec "$python" -m serving export "$@" ;;
  analysis)
    cd "$home"
    exec "$python" -m analysis "$@" ;;
  *)
    echo "paddle-ab: unknown command: $command" >&2
    usage >&2
    exit 2 ;;
esac
