#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment in .venv with torch, canvas-core
# (editable, with its dev extras), every plugin under plugins/ and every backend under backends/.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)

# torch first, pinned: on this project's machines the pair installs from local wheels.
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "[setup] installing torch 2.14.1 + torchvision 0.29.1"
  "${PIP[@]}" install -q --upgrade pip
  "${PIP[@]}" install -q "torch==2.14.1" "torchvision==0.29.1"
fi

# canvas-core itself, then every plugin / backend distribution, in one resolver run.
pkgs=(-e ".[dev]")
for d in plugins/*/ backends/*/; do
  [ -f "$d/pyproject.toml" ] && pkgs+=(-e "$d")
done
echo "[setup] installing canvas-core and ${#pkgs[@]} editable distributions' dependencies"
"${PIP[@]}" install -q "${pkgs[@]}"
.venv/bin/python -c "import canvas_core; print('[setup] canvas-core', canvas_core.__version__, 'ready in .venv')"
