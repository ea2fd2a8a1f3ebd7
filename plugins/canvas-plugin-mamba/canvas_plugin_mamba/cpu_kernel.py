"""The compiled CPU selective scan (``kernel="mamba_cpu"``): build on first use, load, call.

``csrc/scan_cpu.cpp`` steps through the positions in order carrying the state of 16 channels
(in vector registers as far as it fits), reading it where queries read (no state between two
reads is written to a tensor); its backward recomputes each chunk's states from the state saved at the chunk's start.
It computes what :mod:`canvas_plugin_mamba.chunked` computes, to float rounding (float32: its
``exp2`` is a polynomial within about 1e-7 relative of the exact one, under two float32 ulps;
float64 uses the C library's).

The source is compiled with ``torch.utils.cpp_extension`` the first time a CPU mamba module
runs on a machine (about 15 s; the library is cached under ``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``, in a folder named after the source, the torch version and the
CPU, since it is built for the CPU it runs on).  When no C++ compiler is found or the build
fails, mamba runs the PyTorch scan (same results to rounding, slower) and says so once.

``CANVAS_MAMBA_CPU_KERNEL``: ``auto`` (the default: build and use it when possible), ``0``
(never: the PyTorch scan), ``1`` (required: an error naming the build problem if it cannot be
built).
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import platform
import shlex
import shutil
import sys
import threading
import warnings
from pathlib import Path
from typing import Optional, Tuple

from canvas_core.errors import SettingError, UnavailableError

__all__ = ["ENV", "MAX_STATE", "MambaKernelBuildWarning", "setting", "static_problem", "unavailable_reason",
           "available", "require", "usable_for", "threaded", "forward", "backward", "conv_forward",
           "conv_backward", "MAX_CONV"]

ENV = "CANVAS_MAMBA_CPU_KERNEL"
#: the largest state size ``N`` the kernel keeps in registers (larger: the PyTorch scan)
MAX_STATE = 64
#: the widest conv the scan computes inside itself (:func:`conv_forward`)
MAX_CONV = 8
_SOURCE = Path(__file__).with_name("csrc") / "scan_cpu.cpp"
_FLAGS = ("-O3", "-march=native", "-fno-math-errno")
#: added when the compiler has OpenMP: the work items then run on torch's threads (its Linux wheels
#: ship the GNU OpenMP runtime this links to); a compiler without it gets a one-thread build
_OPENMP = ("-fopenmp",)
_LN2 = math.log(2.0)

_lock = threading.Lock()
_state: dict = {}  # "reason": None (loaded) or why not; "setting": the parsed variable


_NO_COMPILER = ("no C++ compiler found (looked for $CXX, or c++, g++, clang++ when CXX is unset); install one "
                "(e.g. apt install g++) or point CXX at one to use the compiled CPU scan")


class MambaKernelBuildWarning(UserWarning):
    """The compiled CPU scan could not be built; mamba runs its PyTorch scan instead."""


def setting() -> str:
    """``CANVAS_MAMBA_CPU_KERNEL`` read once: ``"auto"``, ``"off"`` or ``"on"``."""
    if "setting" not in _state:
        raw = os.environ.get(ENV, "auto").strip().lower()
        table = {"": "auto", "auto": "auto", "0": "off", "off": "off", "false": "off", "no": "off",
                 "1": "on", "on": "on", "true": "on", "yes": "on"}
        if raw not in table:
            raise SettingError(f"{ENV}={os.environ.get(ENV)!r} is not understood: use auto (the default), "
                                   "0 (never use the compiled CPU scan) or 1 (require it)")
        _state["setting"] = table[raw]
    return _state["setting"]


def _compiler() -> Optional[str]:
    """The C++ compiler the build will use: ``$CXX`` (a command line such as ``ccache g++`` is
    judged by its first word), else the first of ``c++``, ``g++``, ``clang++`` on PATH."""
    cxx = os.environ.get("CXX", "").strip()
    if cxx:
        words = shlex.split(cxx)
        return cxx if words and shutil.which(words[0]) else None
    return next((p for p in map(shutil.which, ("c++", "g++", "clang++")) if p), None)


def _cpu_id() -> str:
    """What the machine code depends on (``-march=native``): the CPU's model and flags."""
    text = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = "".join(line for line in f if line.startswith(("model name", "flags")))
    except OSError:
        pass
    return platform.machine() + platform.processor() + text


def _torch_version() -> str:
    """``torch.__version__`` without importing torch when it is not imported yet (the registry's
    check looks for a cached build while listing, where torch must not be imported)."""
    if "torch" not in sys.modules:
        import importlib.util
        import re

        spec = importlib.util.find_spec("torch")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            try:
                text = Path(folder, "version.py").read_text(encoding="utf-8")
            except OSError:
                continue
            found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
            if found:
                return found.group(1)
    import torch

    return torch.__version__


def _name(flags: Tuple[str, ...] = _FLAGS + _OPENMP) -> str:
    key = _SOURCE.read_bytes() + repr((flags, _torch_version(), sys.version_info[:2], _cpu_id())).encode()
    return "canvas_mamba_cpu_" + hashlib.sha256(key).hexdigest()[:12]


def _variants() -> Tuple[Tuple[str, ...], ...]:
    """The flag sets to build with, best first: with OpenMP, then one thread."""
    return (_FLAGS + _OPENMP, _FLAGS)


def _build_dir(name: str) -> Optional[str]:
    """The build folder, or None when there is no ``TORCH_EXTENSIONS_DIR`` and no home folder
    (``HOME`` unset, a user id without a passwd entry: a container run with ``--user``)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.expanduser(os.path.join("~", ".cache", "torch_extensions"))
    return None if root.startswith("~") else os.path.join(root, name)


def _finished(build_dir: str, name: str) -> bool:
    """Whether ``name.so`` in ``build_dir`` is a finished build: ninja's log records the file's
    modification time when the link succeeded (a link cut short, or a file changed since, does not
    match; loading a truncated library would crash the process)."""
    library = name + ".so"
    try:
        stamp = os.stat(os.path.join(build_dir, library))
        with open(os.path.join(build_dir, ".ninja_log"), encoding="utf-8", errors="replace") as f:
            logged = [line.split("\t")[2] for line in f if line.rstrip("\n").split("\t")[3:4] == [library]]
    except (OSError, IndexError):
        return False
    # recent ninja logs nanoseconds, older ones seconds
    return bool(logged) and logged[-1] in (str(stamp.st_mtime_ns), str(int(stamp.st_mtime)))


def _cached() -> bool:
    """Whether a finished build of this source for this machine is in the extensions folder."""
    for flags in _variants():
        try:
            name = _name(flags)
        except Exception:  # noqa: BLE001 - unreadable source: the caller reports that
            return False
        build_dir = _build_dir(name)
        if build_dir is not None and _finished(build_dir, name):
            return True
    return False


def _build() -> Optional[str]:
    """Compile (or load the cached build of) the kernel; None when loaded, else why not."""
    problem = static_problem()
    if problem is not None:
        return problem
    cxx = _compiler()
    import logging

    import torch

    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its import warns that no CUDA runtime is found: not needed here
    try:
        from torch.utils import cpp_extension
    finally:
        quiet.setLevel(level)

    builds = [(flags, _name(flags)) for flags in _variants()]
    if _build_dir(builds[0][1]) is None:
        return ("there is no home folder to keep the build in (HOME is unset); set TORCH_EXTENSIONS_DIR to a "
                "writable folder")
    for flags, name in builds:
        build_dir = _build_dir(name)
        if _finished(build_dir, name):
            # the name covers the source, flags, torch and CPU: a finished library under it is this build.
            # Loaded directly, it also serves a read-only cache or a machine without a compiler (the
            # build step below takes a lock file in the folder); a broken one is rebuilt below
            try:
                torch.ops.load_library(os.path.join(build_dir, name + ".so"))
                torch.ops.canvas_mamba_cpu.scan_read_fwd  # noqa: B018 - the library registered its operators
                _state["threaded"] = _OPENMP[0] in flags
                return None
            except Exception:  # noqa: BLE001 - truncated or foreign file: build it again
                pass
    if cxx is None:
        return _NO_COMPILER
    failure = None
    for flags, name in builds:  # a compiler without OpenMP fails the first: the one-thread build
        build_dir = _build_dir(name)
        if failure is None and not os.path.exists(os.path.join(build_dir, name + ".so")):
            print(f"canvas-plugin-mamba: compiling the CPU selective-scan kernel for this machine (once, about "
                  f"15 s) into {build_dir}", file=sys.stderr, flush=True)
        try:
            os.makedirs(build_dir, exist_ok=True)
            cpp_extension.load(name=name, sources=[str(_SOURCE)], extra_cflags=list(flags),
                               extra_ldflags=[f for f in flags if f in _OPENMP], build_directory=build_dir,
                               is_python_module=False, verbose=False)
            torch.ops.canvas_mamba_cpu.scan_read_fwd  # noqa: B018 - the library registered its operators
        except Exception as exc:  # any build or load failure: the reason, and the PyTorch scan
            lines = [s for s in str(exc).strip().splitlines() if s.strip()]
            detail = " / ".join(lines[-3:])[:400] if lines else type(exc).__name__
            if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR):
                return (f"its build folder {build_dir} cannot be written ({type(exc).__name__}: {detail}); set "
                        "TORCH_EXTENSIONS_DIR to a writable folder")
            failure = f"building {_SOURCE.name} with {cxx} failed ({type(exc).__name__}: {detail})"
            continue
        _state["threaded"] = _OPENMP[0] in flags
        return None
    return failure


def threaded() -> bool:
    """Whether the loaded kernel spreads its work items over torch's threads (built with OpenMP)."""
    return available() and bool(_state.get("threaded"))


def static_problem() -> Optional[str]:
    """Why the compiled CPU scan cannot run here, as far as is known without building it (the
    setting, the platform, a missing compiler, an earlier failed build); None: it should build.
    Imports nothing heavy (the plugin's kernel check calls it while resolving a program)."""
    if _state.get("reason"):
        return _state["reason"]
    if setting() == "off":
        return f"turned off by {ENV}=0"
    if sys.platform == "win32":
        return "the compiled CPU scan is built with GCC / Clang vector extensions (not on Windows)"
    if not _SOURCE.is_file():
        return f"its source {_SOURCE} is missing from the installed package (reinstall canvas-plugin-mamba)"
    compiler, ninja = _compiler(), shutil.which("ninja")  # torch.utils.cpp_extension builds with ninja only
    if (compiler is not None and ninja is not None) or _cached():
        return None
    if compiler is None:
        return _NO_COMPILER
    return "the build needs ninja, which is not on PATH (pip install ninja, or apt install ninja-build)"


def unavailable_reason() -> Optional[str]:
    """Why the compiled CPU scan cannot run here (None: it can).  Builds it on the first call."""
    if "reason" not in _state:
        with _lock:
            if "reason" not in _state:
                reason = _build()
                _state["reason"] = reason
                if reason is not None and setting() == "auto" and not reason.startswith("turned off"):
                    warnings.warn(f"canvas-plugin-mamba: the compiled CPU scan is unavailable: {reason}. mamba "
                                  f"runs its PyTorch scan (same results, slower); set {ENV}=0 to skip the build",
                                  MambaKernelBuildWarning, stacklevel=3)
    return _state["reason"]


def available() -> bool:
    """Whether the compiled CPU scan is built and loaded (builds it on the first call)."""
    return unavailable_reason() is None


def require() -> None:
    """:class:`UnavailableError` naming the reason unless the compiled CPU scan can run."""
    reason = unavailable_reason()
    if reason is not None:
        fix = (f"unset {ENV} (it is {os.environ.get(ENV)!r}: the compiled scan required) or set it to auto"
               if setting() == "on" else "use kernel='auto' or 'mamba_torch'")
        raise UnavailableError(f"mamba: kernel='mamba_cpu' (the compiled CPU scan) cannot run: {reason}; {fix}")


def usable_for(x, state_size: int) -> bool:
    """Whether ``kernel='auto'`` takes the compiled scan for inputs like ``x`` (CPU, float32 or
    float64, ``state_size <= MAX_STATE``) under the setting, building it if needed."""
    import torch

    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or state_size > MAX_STATE:
        return False
    if setting() == "on":
        require()
        return True
    return setting() == "auto" and available()


def _operands(read, L: int, A):
    """What every kernel call takes besides the tensors: ``(rs, rq, A2)``; the queries reading
    position ``t`` are ``rq[rs[t]:rs[t + 1]]`` (``read < 0``: none), ``A2 = A * log2(e)`` laid out
    ``(N, E)``."""
    import torch

    ok = read >= 0
    pos = read[ok]
    counts = torch.bincount(pos, minlength=L)
    rs = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    rq = torch.nonzero(ok).squeeze(1)[torch.argsort(pos, stable=True)]
    return rs, rq, (A.t() / _LN2).contiguous()


def forward(u, delta, A, Bm, C, read, T: int, hs, softplus: bool = False, D=None):
    """``y (Bt, Q, E)`` of the selective scan read at ``read`` (as ``chunked.selective_scan_read``),
    writing the state entering each chunk of ``T`` positions into ``hs`` (``Bt * nC * N * E``
    contiguous elements, ``nC = ceil(L / T)``).  ``softplus``: ``delta`` is the raw step
    projection (``softplus`` is applied inside); ``D (E,)``: adds the skip term ``D u`` at each
    read.  Contiguous inputs in one dtype."""
    import torch

    rs, rq, A2 = _operands(read, u.shape[1], A)
    return torch.ops.canvas_mamba_cpu.scan_read_fwd(u, delta, A2, Bm, C, rs, rq, T, hs, softplus, D)


def backward(gy, u, delta, A, Bm, C, read, T: int, hs, softplus: bool = False, D=None) -> Tuple:
    """Gradients ``(u, delta, A, Bm, C)`` (and ``D`` when given) from ``gy (Bt, Q, E)`` and
    :func:`forward`'s ``hs``; ``delta``'s is the raw input's under ``softplus``."""
    import torch

    rs, rq, A2 = _operands(read, u.shape[1], A)
    gu, gd, gA, gB, gC, gD = torch.ops.canvas_mamba_cpu.scan_read_bwd(gy, u, delta, A2, Bm, C, rs, rq, hs, T,
                                                                      softplus, D)
    grads = (gu, gd, gA.t().contiguous(), gB, gC)
    return grads if D is None else grads + (gD,)


def conv_forward(x, w, bias, delta, A, Bm, C, read, T: int, hs, softplus: bool = False, D=None):
    """:func:`forward` of ``u = silu(causal_depthwise_conv(x, w, bias))`` (``x (Bt, L, E)``,
    ``w (E, K)``, ``K <= MAX_CONV``, ``bias (E,)``) with the conv computed inside the scan: ``u`` is
    never stored."""
    import torch

    rs, rq, A2 = _operands(read, x.shape[1], A)
    return torch.ops.canvas_mamba_cpu.conv_scan_read_fwd(x, w, bias, delta, A2, Bm, C, rs, rq, T, hs, softplus, D)


def conv_backward(gy, x, w, bias, delta, A, Bm, C, read, T: int, hs, softplus: bool = False, D=None) -> Tuple:
    """Gradients ``(x, w, bias, delta, A, Bm, C)`` (and ``D`` when given) of :func:`conv_forward`."""
    import torch

    rs, rq, A2 = _operands(read, x.shape[1], A)
    gx, gw, gb, gd, gA, gB, gC, gD = torch.ops.canvas_mamba_cpu.conv_scan_read_bwd(
        gy, x, w, bias, delta, A2, Bm, C, rs, rq, hs, T, softplus, D)
    grads = (gx, gw, gb, gd, gA.t().contiguous(), gB, gC)
    return grads if D is None else grads + (gD,)
