"""Build a C++ CPU kernel on first use, load it, or say why it cannot run.

A :class:`CpuKernel` names one C++ source that registers its operators with ``TORCH_LIBRARY``
(``namespace``, checked through ``probe``, one of its operators).  The first time a caller asks
whether it is :meth:`~CpuKernel.available`, the source is compiled with
``torch.utils.cpp_extension`` (``-O3 -march=native -fno-math-errno``, with OpenMP when the
compiler has it, else a one-thread build) into ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``), in a folder named after a hash of the source, the shared headers,
the flags, the torch and Python versions and the CPU (the code is built for the CPU it runs on).
The shared headers are canvas-core's ``kernels/csrc/*.h`` (``cpu_vec.h``: lane vectors, ``exp2``,
loads / stores, lane sums): that folder is on every kernel's include path.  A finished
build there is loaded directly, also from a read-only cache or on a machine without a compiler.
When it cannot be built, the caller runs its PyTorch path and one warning says why, pointing at
the first line of the caller's own code (not canvas-core's, torch's or the kernel's package's).

The environment variable named by ``env`` chooses: ``auto`` (default: build and use it when
possible), ``0`` (never), ``1`` (required: :meth:`~CpuKernel.require` raises naming the problem).
Nothing here imports torch until a build or load is attempted.
"""

from __future__ import annotations

import errno
import hashlib
import os
import platform
import shlex
import shutil
import sys
import threading
import warnings
from pathlib import Path
from typing import Optional, Tuple, Type

from canvas_core.errors import SettingError, UnavailableError

__all__ = ["CpuKernel", "CpuKernelBuildWarning"]

_FLAGS = ("-O3", "-march=native", "-fno-math-errno")
#: the shared headers' folder, on every kernel's include path
_INCLUDE = Path(__file__).with_name("csrc")
#: the header both canvas kernels include (its absence: a broken install)
_HEADER = "cpu_vec.h"
_OPENMP = ("-fopenmp",)
_SETTINGS = {"": "auto", "auto": "auto", "0": "off", "off": "off", "false": "off", "no": "off",
             "1": "on", "on": "on", "true": "on", "yes": "on"}


class CpuKernelBuildWarning(UserWarning):
    """A compiled CPU kernel could not be built; its caller runs the PyTorch path instead."""


def _compiler() -> Optional[str]:
    """``$CXX`` (judged by its first word), else the first of ``c++``, ``g++``, ``clang++`` on PATH."""
    cxx = os.environ.get("CXX", "").strip()
    if cxx:
        words = shlex.split(cxx)
        return cxx if words and shutil.which(words[0]) else None
    return next((p for p in map(shutil.which, ("c++", "g++", "clang++")) if p), None)


def _cpu_id(cpuinfo: str = "/proc/cpuinfo") -> str:
    """What ``-march=native`` code depends on: the CPU's model and flags, each distinct line once
    (one per core would tie a build to the core count: a machine with the same CPU and another
    number of cores could not use a shared cache)."""
    text = ""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            text = "".join(sorted({line for line in f if line.startswith(("model name", "flags"))}))
    except OSError:
        pass
    return platform.machine() + platform.processor() + text


def _torch_version() -> str:
    """``torch.__version__``, read from torch's ``version.py`` while torch is not imported yet."""
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


def _package_root(source: Path) -> Optional[str]:
    """The outermost package folder holding ``source`` (the ``.cpp`` of canvas-core or of a
    plugin), with a trailing separator; None outside any package."""
    found = None
    for folder in (source.parent, *source.parent.parents):
        if (folder / "__init__.py").is_file():
            found = folder
        elif found is not None:
            break
    return None if found is None else os.path.join(str(found), "")


def _library_folders(source: Path) -> Tuple[str, ...]:
    """The folders whose frames a build warning passes over: canvas-core's, torch's (``nn.Module``
    calls) and the package shipping ``source``."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # as the frames name it: not resolved
    folders = [os.path.join(here, ""), _package_root(Path(os.path.abspath(source)))]
    torch = sys.modules.get("torch")
    if getattr(torch, "__file__", None):
        folders.append(os.path.join(os.path.dirname(torch.__file__), ""))
    return tuple(f for f in folders if f)


def _caller_stacklevel(folders: Tuple[str, ...]) -> int:
    """The ``stacklevel`` for :func:`warnings.warn`, called by this function's caller, that names
    the innermost frame outside ``folders``: whatever path led here (rwkv's ``usable_for``, a
    plugin's glue, a registry check), the warning shows the line of the caller's code.  Frames of
    ``importlib``'s bootstrap are not counted (``warnings`` skips them too)."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and (_bootstrap(frame) or os.path.abspath(frame.f_code.co_filename).startswith(folders)):
        frame = frame.f_back
        if not _bootstrap(frame):
            level += 1
    return level


def _bootstrap(frame) -> bool:
    """Whether ``frame`` runs ``importlib``'s bootstrap (a frame ``warnings`` does not count)."""
    name = frame.f_code.co_filename
    return "importlib" in name and "_bootstrap" in name


def _finished(build_dir: str, name: str) -> bool:
    """Whether ``name.so`` in ``build_dir`` is a finished build: ninja's log records the file's
    modification time when its link succeeded (a link cut short, or a file changed since, does
    not match, and loading a truncated library would crash the process)."""
    library = name + ".so"
    try:
        stamp = os.stat(os.path.join(build_dir, library))
        with open(os.path.join(build_dir, ".ninja_log"), encoding="utf-8", errors="replace") as f:
            logged = [line.split("\t")[2] for line in f if line.rstrip("\n").split("\t")[3:4] == [library]]
    except (OSError, IndexError):
        return False
    return bool(logged) and logged[-1] in (str(stamp.st_mtime_ns), str(int(stamp.st_mtime)))  # ns or s


class CpuKernel:
    """One C++ CPU kernel built on first use.

    Args:
        source: the ``.cpp`` file (shipped as package data); it may ``#include "cpu_vec.h"``, the
            lane helpers canvas-core ships for its kernels and plugins' (:attr:`include`).
        namespace: its ``TORCH_LIBRARY`` namespace; ``probe``: one operator in it (loaded means
            ``torch.ops.<namespace>.<probe>`` resolves).
        env: the environment variable choosing auto / 0 / 1.
        label: what messages call it (``"rwkv's compiled CPU WKV"``); ``owner``: the distribution
            that prints the build line, warns and ships the source (``"canvas-core"``);
            ``fallback``: what runs instead (for the warning); ``seconds``: about how long the
            build takes (for the build line).
        warning: the warning class raised once when the kernel is unavailable under ``auto``.
        what, instead: how :meth:`require`'s error names the caller's choice that needs the
            kernel (default: ``label``) and what it advises when the variable did not require it
            (default: setting the variable to auto or using the PyTorch path).
    """

    #: the flags of the threaded build (tried first); a compiler that refuses them gets a one-thread build
    _openmp: Tuple[str, ...] = _OPENMP
    #: the shared headers' folder (on the include path; its ``*.h`` are part of the build's name)
    include: Path = _INCLUDE

    def __init__(self, source: Path, namespace: str, probe: str, env: str, label: str, owner: str = "canvas-core",
                 fallback: str = "the PyTorch path (same results, slower)", seconds: int = 15,
                 warning: Type[Warning] = CpuKernelBuildWarning, what: str = "", instead: str = "") -> None:
        self.source, self.namespace, self.probe, self.env = Path(source), namespace, probe, env
        self.label, self.owner, self.fallback, self.seconds, self.warning = label, owner, fallback, seconds, warning
        self.what, self.instead = what or label, instead or f"set {env}=auto or use the PyTorch path"
        self._lock = threading.Lock()
        self._state: dict = {}  # "setting"; "reason": None (loaded) or why not; "threaded"

    def setting(self) -> str:
        """The environment variable read once: ``"auto"``, ``"off"`` or ``"on"``; anything else is a
        :class:`SettingError` naming it."""
        if "setting" not in self._state:
            raw = os.environ.get(self.env, "auto").strip().lower()
            if raw not in _SETTINGS:
                raise SettingError(f"{self.env}={os.environ.get(self.env)!r} is not understood: use auto (the "
                                   f"default), 0 (never use {self.label}) or 1 (require it)")
            self._state["setting"] = _SETTINGS[raw]
        return self._state["setting"]

    def _no_compiler(self) -> str:
        return (f"no C++ compiler found (looked for $CXX, or c++, g++, clang++ when CXX is unset); install one "
                f"(e.g. apt install g++) or point CXX at one to use {self.label}")

    def _headers(self) -> bytes:
        """The names and bytes of the shared headers: a changed header is a new build, never a
        stale cached one."""
        return b"".join(h.name.encode() + b"\0" + h.read_bytes() for h in sorted(self.include.glob("*.h")))

    def _name(self, flags: Tuple[str, ...]) -> str:
        key = (self.source.read_bytes() + self._headers()
               + repr((flags, _torch_version(), sys.version_info[:2], _cpu_id())).encode())
        return f"{self.namespace}_{hashlib.sha256(key).hexdigest()[:12]}"

    @staticmethod
    def compiler() -> Optional[str]:
        """The C++ compiler a build would run (``$CXX``, else ``c++``, ``g++`` or ``clang++`` on
        PATH); None when there is none."""
        return _compiler()

    def _variants(self) -> Tuple[Tuple[str, ...], ...]:
        """The flag sets to try, best first: with OpenMP, then one thread."""
        return (_FLAGS + self._openmp, _FLAGS)

    def _threaded(self, flags: Tuple[str, ...]) -> bool:
        return bool(set(self._openmp) & set(flags))

    @staticmethod
    def _build_dir(name: str) -> Optional[str]:
        """The build folder; None without ``TORCH_EXTENSIONS_DIR`` and without a home folder."""
        root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.expanduser(os.path.join("~", ".cache", "torch_extensions"))
        return None if root.startswith("~") else os.path.join(root, name)

    def _cached(self) -> bool:
        """Whether a finished build of this source for this machine is in the extensions folder."""
        for flags in self._variants():
            try:
                name = self._name(flags)
            except Exception:  # noqa: BLE001 - unreadable source, no torch: static_problem reports it
                return False
            build_dir = self._build_dir(name)
            if build_dir is not None and _finished(build_dir, name):
                return True
        return False

    def _loaded(self) -> None:
        import torch

        getattr(getattr(torch.ops, self.namespace), self.probe)  # the library registered its operators

    def _build(self) -> Optional[str]:
        """Load a finished build or compile one; None when loaded, else why not."""
        problem = self.static_problem()
        if problem is not None:
            return problem
        import logging

        import torch

        quiet = logging.getLogger("torch.utils.cpp_extension")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # its import warns when no CUDA runtime is found: not needed here
        try:
            from torch.utils import cpp_extension
        finally:
            quiet.setLevel(level)
        builds = [(flags, self._name(flags)) for flags in self._variants()]
        if self._build_dir(builds[0][1]) is None:
            return "there is no home folder to keep the build in (HOME is unset); set TORCH_EXTENSIONS_DIR to a writable folder"
        for flags, name in builds:
            build_dir = self._build_dir(name)
            if _finished(build_dir, name):
                try:  # the name covers source, flags, torch and CPU: a finished library is this build
                    torch.ops.load_library(os.path.join(build_dir, name + ".so"))
                    self._loaded()
                    self._state["threaded"] = self._threaded(flags)
                    return None
                except Exception:  # noqa: BLE001 - a foreign or broken file: built again below
                    pass
        cxx = _compiler()
        if cxx is None:
            return self._no_compiler()
        failure = None
        for flags, name in builds:  # a compiler without OpenMP fails the first: the one-thread build
            build_dir = self._build_dir(name)
            if failure is None:
                print(f"{self.owner}: building {self.label} for this machine (once, about {self.seconds} s) into "
                      f"{build_dir}", file=sys.stderr, flush=True)
            try:
                os.makedirs(build_dir, exist_ok=True)
                cpp_extension.load(name=name, sources=[str(self.source)], extra_cflags=list(flags),
                                   extra_ldflags=[f for f in flags if f in self._openmp],
                                   extra_include_paths=[str(self.include)], build_directory=build_dir,
                                   is_python_module=False, verbose=False)
                self._loaded()
            except Exception as exc:  # any build or load failure: the reason, and the PyTorch path
                lines = [s for s in str(exc).strip().splitlines() if s.strip()]
                detail = " / ".join(lines[-3:])[:400] if lines else type(exc).__name__
                if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR):
                    return (f"its build folder {build_dir} cannot be written ({type(exc).__name__}: {detail}); set "
                            "TORCH_EXTENSIONS_DIR to a writable folder")
                failure = f"building {self.source.name} with {cxx} failed ({type(exc).__name__}: {detail})"
                continue
            self._state["threaded"] = self._threaded(flags)
            return None
        return failure

    def static_problem(self) -> Optional[str]:
        """Why the kernel cannot run here as far as is known without building it (the setting, the
        platform, a missing source, header, compiler or ninja, an earlier failed build); None: it should
        build.  Imports nothing heavy."""
        if self._state.get("reason"):
            return self._state["reason"]
        if self.setting() == "off":
            return f"turned off by {self.env}=0"
        if sys.platform == "win32":
            return f"{self.label} is built with GCC / Clang vector extensions (not on Windows)"
        if not self.source.is_file():
            return f"its source {self.source} is missing from the installed package (reinstall {self.owner})"
        if not (self.include / _HEADER).is_file():
            return f"the shared header {self.include / _HEADER} is missing from the installed package (reinstall canvas-core)"
        compiler, ninja = _compiler(), shutil.which("ninja")  # torch.utils.cpp_extension builds with ninja only
        if (compiler is not None and ninja is not None) or self._cached():
            return None
        if compiler is None:
            return self._no_compiler()
        return "the build needs ninja, which is not on PATH (pip install ninja, or apt install ninja-build)"

    def unavailable_reason(self) -> Optional[str]:
        """Why the kernel cannot run here (None: it can).  Builds or loads it on the first call and
        warns once (under ``auto``) when that fails."""
        if "reason" not in self._state:
            with self._lock:
                if "reason" not in self._state:
                    reason = self._build()
                    self._state["reason"] = reason
                    if reason is not None and self.setting() == "auto" and not reason.startswith("turned off"):
                        warnings.warn(f"{self.owner}: {self.label} is unavailable: {reason}. It runs {self.fallback} "
                                      f"instead; set {self.env}=0 to skip the build", self.warning,
                                      stacklevel=_caller_stacklevel(_library_folders(self.source)))
        return self._state["reason"]

    def available(self) -> bool:
        """Whether the kernel is built and loaded (builds it on the first call)."""
        return self.unavailable_reason() is None

    def require(self, what: str = "") -> None:
        """:class:`UnavailableError` naming the reason unless the kernel can run; ``what`` names the
        caller's choice that needs it (default: the constructor's ``what``)."""
        reason = self.unavailable_reason()
        if reason is not None:
            fix = (f"unset {self.env} (it is {os.environ.get(self.env)!r}: the kernel required) or set it to auto"
                   if self.setting() == "on" else self.instead)
            raise UnavailableError(f"{what or self.what} cannot run: {reason}; {fix}")

    def wanted(self) -> bool:
        """Whether a caller under ``auto`` should take the kernel: the setting, then
        :meth:`available` (``1``: :meth:`require`)."""
        if self.setting() == "on":
            self.require()
            return True
        return self.setting() == "auto" and self.available()

    def threaded(self) -> bool:
        """Whether the loaded kernel runs its work items on torch's threads (built with OpenMP)."""
        return self.available() and bool(self._state.get("threaded"))

    def reset(self) -> None:
        """Forget the setting and the build outcome (tests: read the variable again, retry)."""
        self._state.clear()
