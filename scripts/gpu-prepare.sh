#!/usr/bin/env bash
# Step 1 of the GPU check, run HERE (a machine with PyPI): gather everything the GPU machine lacks
# into .gpu-wheels/ (git-ignored; it travels with the working tree), well under 64 MiB.
#
#   bash scripts/gpu-prepare.sh            # builds/downloads into .gpu-wheels/
#   bash scripts/gpu-prepare.sh --list     # prints the third-party requirements it would fetch
#
# The GPU machines lent to this project have no network and a fixed image: Python 3.12, torch
# with CUDA, triton, timm, pluggy, safetensors, pytest, hypothesis, numpy, huggingface-hub, ... but
# no pydantic, no diffusers and no canvas-core.  This script therefore writes:
#   * wheels of canvas-core and of every distribution under plugins/ and backends/ (no deps);
#   * Python 3.12 manylinux wheels of the third-party packages in REQUIREMENTS below, at the
#     versions this checkout's .venv uses (so the GPU run tests what CI tests).
# Step 2, on the GPU machine: `bash scripts/gpu-check.sh` installs them with
# `pip install --no-index --target` and runs the CUDA tests and benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the GPU image lacks (its package list: the device tool's KINDS.md), with what those need.
REQUIREMENTS=(
  pydantic pydantic_core annotated-types typing-inspection typing_extensions   # schema layer
  diffusers importlib_metadata lazy-importer                                    # CogVideoX / Mochi backbones
  jsonschema jsonschema-specifications referencing rpds-py                      # schema export tests
  canvas-engineering einops                                                     # the peer package (comparisons)
  flash-linear-attention fla-core                                               # fla kernels (canvas-plugin-fla)
)
PY_VERSION="${GPU_PYTHON_VERSION:-3.12}"
OUT="${GPU_WHEELS:-.gpu-wheels}"

if [ "${1:-}" = "--list" ]; then
  printf '%s\n' "${REQUIREMENTS[@]}"
  exit 0
fi

PY=.venv/bin/python
[ -x "$PY" ] || { echo "gpu-prepare: run 'bash scripts/dev-setup.sh' first (it builds .venv)" >&2; exit 2; }
# $OUT is deleted and rebuilt: refuse anything but a folder of wheels (GPU_WHEELS=. would be the checkout)
if [ -e "$OUT" ] || [ -L "$OUT" ]; then
  if [ -L "$OUT" ] || [ ! -d "$OUT" ] || [ -n "$(find "$OUT" -mindepth 1 -maxdepth 1 ! -name '*.whl' -print -quit)" ]; then
    echo "gpu-prepare: $OUT exists and is not a folder of wheels made by this script; refusing to delete it. Set GPU_WHEELS to a new folder, or remove it yourself" >&2
    exit 2
  fi
fi
rm -rf "$OUT"
mkdir -p "$OUT"

echo "[gpu-prepare] wheels of canvas-core, plugins/*, backends/*"
# Each distribution is built from a copy of its files as git sees them (tracked, plus untracked and
# not ignored): setuptools packages everything in an in-tree build/lib/, so a stale build/ left by
# an earlier build would put deleted or renamed modules into the wheels.
SRC="$(mktemp -d -t canvas-gpu-src.XXXXXX)"
trap 'rm -rf "$SRC"' EXIT
dists=()
for d in . plugins/*/ backends/*/; do
  [ -f "$d/pyproject.toml" ] || continue
  if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then dists+=("$d"); continue; fi  # no git: as is
  copy="$SRC/$(basename "$(cd "$d" && pwd)")"
  mkdir -p "$copy"
  (cd "$d" && git ls-files -z -co --exclude-standard -- . ':!plugins' ':!backends' | tar --null --ignore-failed-read -T - -cf - 2>/dev/null) \
    | tar -xf - -C "$copy"
  dists+=("$copy")
done
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" "${dists[@]}"

echo "[gpu-prepare] Python $PY_VERSION manylinux wheels: ${REQUIREMENTS[*]}"
pins=()
for req in "${REQUIREMENTS[@]}"; do
  v="$("$PY" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: print('')" "$req")"
  pins+=("$req${v:+==$v}")
done
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  "${platforms[@]}" -d "$OUT" "${pins[@]}"

size_kib=$(du -sk "$OUT" | cut -f1)
echo "[gpu-prepare] $(ls "$OUT" | wc -l) wheels, $((size_kib / 1024)) MiB in $OUT (the limit that travels is 64 MiB)"
if [ "$size_kib" -gt $((56 * 1024)) ]; then
  echo "[gpu-prepare] too large to travel with the working tree; drop a package from REQUIREMENTS" >&2
  exit 1
fi
