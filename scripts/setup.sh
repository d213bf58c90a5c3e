#!/usr/bin/env bash
# Create .venv with Python 3.9 and the pinned dependencies. Safe to run again: a second run
# with unchanged pins only checks a stamp file and returns.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/setup.sh [--gpu] [--force]

Creates .venv (Python 3.9) in the repository and installs the pinned dependencies
from requirements.txt / constraints.txt.

  --gpu     install paddlepaddle-gpu 2.6.2 and paddle-serving-server-gpu 0.9.0 (CUDA 11.2)
            instead of the CPU packages
  --force   reinstall even if the stamp says the venv is up to date

Python 3.9 is looked up as: $PYTHON, python3.9 on PATH, pyenv's installed 3.9.x.
Paddle Serving 0.9.0 only installs on Python 3.6-3.9, so no other version will do.
EOF
}

gpu=0
force=0
for arg in "$@"; do
  case "$arg" in
    --gpu) gpu=1 ;;
    --force) force=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
  esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
stamp="$venv/.setup-stamp"
flavour=$([ "$gpu" = 1 ] && echo gpu || echo cpu)
wanted="$flavour $(cat requirements.txt constraints.txt | sha256sum | cut -c1-16)"

if [ "$force" = 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && [ -x "$venv/bin/python" ]; then
  echo "setup: .venv is up to date ($flavour)"
  exit 0
fi

is_python39() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 9))' >/dev/null 2>&1; }

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.9 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.9*/bin/python3.9; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 && is_python39 "$candidate"; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

if ! python=$(find_python); then
  cat >&2 <<'EOF'
setup: Python 3.9 not found.
Paddle Serving 0.9.0 (its last release) installs only on Python 3.6-3.9. Install one of:
  - pyenv:   pyenv install 3.9.18            (this repo's .python-version selects it)
  - Debian:  apt-get install python3.9 python3.9-venv   (where the distribution has it)
or point PYTHON at a Python 3.9 interpreter:  PYTHON=/path/to/python3.9 scripts/setup.sh
EOF
  exit 1
fi

if [ -x "$venv/bin/python" ] && ! is_python39 "$venv/bin/python"; then
  echo "setup: .venv is not Python 3.9; recreating it"
  rm -rf "$venv"
fi
[ -x "$venv/bin/python" ] || { echo "setup: creating .venv with $python"; "$python" -m venv "$venv"; }

pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade "pip<25" >/dev/null

requirements=(-r requirements.txt -c constraints.txt)
if [ "$gpu" = 1 ]; then
  # Same pins, GPU packages: filter the CPU ones out and name their GPU twins.
  gpu_requirements="$venv/requirements-gpu.txt"
  grep -vE '^(paddlepaddle|paddle-serving-server)==' requirements.txt > "$gpu_requirements"
  printf '%s\n' "paddlepaddle-gpu==2.6.2" "paddle-serving-server-gpu==0.9.0.post112" >> "$gpu_requirements"
  grep -vE '^(paddlepaddle|paddle-serving-server)==' constraints.txt > "$venv/constraints-gpu.txt"
  "${pip[@]}" uninstall -y paddlepaddle paddle-serving-server >/dev/null 2>&1 || true
  requirements=(-r "$gpu_requirements" -c "$venv/constraints-gpu.txt")
else
  "${pip[@]}" uninstall -y paddlepaddle-gpu paddle-serving-server-gpu >/dev/null 2>&1 || true
fi

echo "setup: installing pinned dependencies ($flavour) into .venv"
"${pip[@]}" install "${requirements[@]}"
# paddle-serving-app pins opencv-python==3.4.17.61, which has no wheel and does not build;
# nothing we use needs OpenCV.
"${pip[@]}" install --no-deps paddle-serving-app==0.9.0

"$venv/bin/python" - <<'EOF'
import paddle, numpy, paddle_serving_server, paddle_serving_client, aiohttp  # noqa: F401
print(f"setup: ok (paddle {paddle.__version__}, numpy {numpy.__version__})")
EOF
echo "$wanted" > "$stamp"
