#!/usr/bin/env bash
# Start, stop or report the Paddle Serving backends of a registry that live on this node.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/deploy.sh up|down|status [options]

On a serving node: the backends of the registry that have a `model:` and an endpoint on this
machine get one Paddle Serving pipeline server each, on the endpoint's port.

  up       set up .venv (GPU stack with --gpu), export the demo models if the registry's bundles
           are missing, start the backends, wait until each answers, report the endpoints
  down     stop the backends started by `up`: each drains the requests in flight (at most
           its grace period) and exits with nothing of it left; says so when none was running
  status   pid, endpoint and readiness of each backend (exit 1 unless all are ready)

Any working directory will do: the run dir defaults to run/ beside the registry file. `up` that
fails on one backend stops again the backends it started and exits non-zero.

options:
  --config FILE        registry (default: experiments.yaml)
  --gpu N              run every backend on GPU N (installs paddlepaddle-gpu and
                       paddle-serving-server-gpu); default: each backend's `device:`
  --backend NAME       only this backend (repeatable)
  --run-dir DIR        pid files and logs (default: run/ beside the registry file)
  --grace DURATION     up: on stop, how long requests in flight may take, e.g. 10s (default 10s)
  --systemd DIR        also write systemd units for the backends into DIR (e.g.
                       /etc/systemd/system), from deploy/systemd/paddle-serving.service.in;
                       they run as the user paddle-ab, sandboxed (create it first:
                       useradd --system paddle-ab). The router's unit is
                       deploy/systemd/paddle-ab-router.service, its registry for /etc/paddle-ab
                       deploy/systemd/experiments.yaml (absolute log, state and model paths)
  -h, --help           this text

Kubernetes, images, systemd and GPU nodes: docs/deploy.md.
EOF
}

[ $# -ge 1 ] || { usage >&2; exit 2; }
action="$1"
shift
case "$action" in
  up|down|status) ;;
  -h|--help) usage; exit 0 ;;
  *) echo "deploy.sh: unknown action: $action" >&2; usage >&2; exit 2 ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
config="experiments.yaml"
run_dir=""
grace=""
gpu=""
systemd_dir=""
backends=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config|--gpu|--backend|--run-dir|--grace|--systemd)
      [ $# -ge 2 ] || { echo "deploy.sh: $1 needs a value" >&2; exit 2; } ;;
  esac
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --gpu) gpu="$2"; shift 2 ;;
    --backend) backends+=(--backend "$2"); shift 2 ;;
    --run-dir) run_dir="$2"; shift 2 ;;
    --grace) grace="$2"; shift 2 ;;
    --systemd) systemd_dir="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "deploy.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ -f "$config" ] || { echo "deploy.sh: registry not found: $config" >&2; exit 2; }
config="$(cd "$(dirname "$config")" && pwd)/$(basename "$config")"
# Absolute paths: the commands below run from the repository, whatever the caller's directory.
run_args=()
if [ -n "$run_dir" ]; then
  mkdir -p "$run_dir"
  run_args=(--run-dir "$(cd "$run_dir" && pwd)")
fi
grace_args=()
if [ -n "$grace" ]; then
  [ "$action" = up ] || { echo "deploy.sh: --grace is for up (down uses what up recorded)" >&2; exit 2; }
  grace_args=(--grace "$grace")
fi

device_args=()
if [ -n "$gpu" ]; then
  [[ "$gpu" =~ ^[0-9]+$ ]] || { echo "deploy.sh: --gpu takes a GPU index, e.g. --gpu 0" >&2; exit 2; }
  device_args=(--device "gpu:$gpu")
fi

python="$root/.venv/bin/python"
serving() { (cd "$root" && "$python" -m serving "$@"); }

if [ "$action" = up ]; then
  if [ -n "$gpu" ]; then "$root/scripts/setup.sh" --gpu; else "$root/scripts/setup.sh"; fi
  # Export the demo bundles when the registry points at them and they are not there yet.
  while IFS=$'\t' read -r name model; do
    [ -n "$model" ] || continue
    if [ ! -f "$model/bundle.json" ]; then
      case "$(basename "$model")" in
        sentiment_v1|sentiment_v2)
          echo "deploy: $name: exporting the demo models into $(dirname "$model")"
          serving demo-models --out "$(dirname "$model")" ;;
        *)
          echo "deploy: $name: no bundle at $model; export it with" \
               "'python -m serving export --model PREFIX --out $model'" >&2
          exit 1 ;;
      esac
    fi
  done < <(cd "$root" && "$python" -c '
import sys
from serving.fleet import local_servers
from pathlib import Path
try:
    servers = local_servers(Path(sys.argv[1]))
except ValueError as exc:
    sys.exit(f"deploy: {exc}")
for server in servers:
    print(f"{server.backend}\t{server.model}")
' "$config" | sort -u)
fi

serving "$action" --config "$config" ${run_args[@]+"${run_args[@]}"} \
  ${backends[@]+"${backends[@]}"} ${device_args[@]+"${device_args[@]}"} \
  ${grace_args[@]+"${grace_args[@]}"}

if [ "$action" = up ] && [ -n "$systemd_dir" ]; then
  mkdir -p "$systemd_dir"
  serving systemd --config "$config" --out "$(cd "$systemd_dir" && pwd)" \
    ${run_args[@]+"${run_args[@]}"} ${backends[@]+"${backends[@]}"} \
    ${device_args[@]+"${device_args[@]}"} ${grace_args[@]+"${grace_args[@]}"}
fi
