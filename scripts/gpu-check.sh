#!/usr/bin/env bash
# Step 2 of the GPU check: verify every CUDA path of canvas-core in one call (target: about 8
# minutes on one GPU).  Step 1 ran on a machine with PyPI: `bash scripts/gpu-prepare.sh`.
#
#   bash scripts/gpu-check.sh            # from the repository root, on the GPU machine
#
# Where canvas-core is not importable (the GPU machines have no network and no canvas-core), it
# first installs the wheels that gpu-prepare.sh put in .gpu-wheels/ with
# `pip install --no-index --target` (no network) and puts them on PYTHONPATH.  Then it runs every
# test marked `cuda` (core, plugins, backends: FlexAttention / xformers / mamba-ssm / fla paths
# where those packages are installed), the backbone, canvas and per-type benchmarks on CUDA, and
# prints one summary table (step, result, seconds).  Logs go to $GPU_CHECK_LOGS (default: a
# temporary directory).  Without a CUDA device it says so and exits 0.
# Exit status: 0 when every step passed, 1 otherwise.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
WHEELS="${GPU_WHEELS:-.gpu-wheels}"

# installed distributions, not the source tree in the working directory (that one has no entry
# points, so its plugins would be missing)
if ! "$PY" -c "import importlib.metadata as m; [m.version(d) for d in ('canvas-core', 'canvas-plugin-mamba', 'pydantic', 'diffusers')]" >/dev/null 2>&1; then
  if ! ls "$WHEELS"/canvas_core-*.whl >/dev/null 2>&1; then
    echo "gpu-check: canvas-core is not importable and $WHEELS/ holds no wheels;"
    echo "gpu-check: run 'bash scripts/gpu-prepare.sh' on a machine with PyPI first (see CONTRIBUTING.md)"
    exit 2
  fi
  SITE="${GPU_SITE:-/tmp/canvas-gpu-site}"
  echo "gpu-check: installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE (no network)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl || { echo "gpu-check: installing the wheels failed"; exit 1; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c "import canvas_core; print('gpu-check: canvas-core', canvas_core.__version__, 'from', canvas_core.__file__)" \
    || { echo "gpu-check: canvas-core still does not import"; exit 1; }
fi
if [ "${GPU_CHECK_INSTALL_ONLY:-0}" = "1" ]; then
  exit 0
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu-check: no CUDA GPU is visible to torch on this machine; nothing to check."
  echo "gpu-check: (the tests marked 'cuda' skip themselves on CPU; run this script on a GPU machine)"
  exit 0
fi

LOGS="${GPU_CHECK_LOGS:-$(mktemp -d -t canvas-gpu-check.XXXXXX)}"
mkdir -p "$LOGS"
DEVICE_NAME="$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")"
echo "gpu-check: $DEVICE_NAME; logs in $LOGS"
"$PY" - <<'EOF' | tee "$LOGS/packages.txt"
import importlib.util, torch
def have(m):
    return "yes" if importlib.util.find_spec(m) is not None else "no"
flex = "yes" if importlib.util.find_spec("torch.nn.attention.flex_attention") is not None else "no"
print(f"gpu-check: torch {torch.__version__} (CUDA {torch.version.cuda}); flex_attention {flex}; "
      f"xformers {have('xformers')}; mamba_ssm {have('mamba_ssm')}; triton {have('triton')}")
EOF

STEPS=()
RESULTS=()
SECONDS_USED=()
FAILED=0

step() {  # step NAME TIMEOUT_S COMMAND...
  local name="$1" limit="$2"
  shift 2
  local log="$LOGS/$(echo "$name" | tr ' /' '__').log"
  local t0=$(date +%s)
  echo "gpu-check: $name ..."
  timeout "$limit" "$@" >"$log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local res
  if [ $rc -eq 0 ]; then res="passed"
  elif [ $rc -eq 124 ]; then res="TIMEOUT (>${limit}s)"; FAILED=1
  else res="FAILED (exit $rc)"; FAILED=1
  fi
  case "$name" in
    tests*) local tail_line
            tail_line="$(grep -E '[0-9]+ (passed|failed|error|skipped)' "$log" | tail -1)"
            [ -n "$tail_line" ] && res="$res: $tail_line" ;;
  esac
  STEPS+=("$name"); RESULTS+=("$res"); SECONDS_USED+=("$dt")
}

# Budget (worst case, each step stopped by its timeout): 200 + 100 + 70 + 100 s = 7.8 minutes.
# 1. every test marked cuda (they skip with a reason where a package is missing)
step "tests -m cuda" 200 env OMP_NUM_THREADS=4 "$PY" -m pytest -q -m cuda -rs -p no:cacheprovider tests plugins backends
# 2. backbones on CUDA at the CogVideoX-2B size (18k tokens): install cost, forward and
#    forward+backward with the kernel the compiler resolves for the GPU (one FlexAttention
#    compile per backbone and topology)
step "bench_backbones cuda" 100 "$PY" benchmarks/bench_backbones.py --device cuda --sizes 18k --repeats 3
# 3. the canvas layer on CUDA (canvas-engineering skipped at these sizes)
step "bench_canvas cuda" 70 "$PY" benchmarks/bench_canvas.py --device cuda --sizes 4096,16384 --repeats 3 --ce-max-n 1024
# 4. every attention type at 4k and 16k positions (mamba-ssm / fla kernels where installed)
step "bench_types cuda" 100 "$PY" benchmarks/bench_types.py --device cuda

echo
echo "gpu-check summary ($DEVICE_NAME)"
printf '%-24s  %-8s  %s\n' "step" "seconds" "result"
printf '%-24s  %-8s  %s\n' "------------------------" "--------" "------"
for i in "${!STEPS[@]}"; do
  printf '%-24s  %-8s  %s\n' "${STEPS[$i]}" "${SECONDS_USED[$i]}" "${RESULTS[$i]}"
done
echo
echo "skipped cuda tests (reasons):"
grep -E '^SKIPPED' "$LOGS/tests_-m_cuda.log" 2>/dev/null | sed 's/^/  /' || true
echo "benchmark tables: $LOGS/bench_backbones_cuda.log, $LOGS/bench_canvas_cuda.log, $LOGS/bench_types_cuda.log"
exit $FAILED
