"""Where an implementation is asked to run (:class:`RuntimeContext`) and the device / dtype
spellings it accepts, checked without importing torch."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from typing import Any, Optional

from canvas_core.errors import CanvasTypeError, PluginError, did_you_mean



class SpecError(PluginError, ValueError):
    """A registration or a runtime context is malformed: bad name, factory path, metadata, or a
    device / dtype torch does not know."""


def normalize_device(device: Any) -> str:
    """Device *type* of ``device``: ``"cuda:1"`` / ``torch.device("cuda", 1)`` -> ``"cuda"``."""
    if device is None:
        return "cpu"
    dev_type = getattr(device, "type", None)  # torch.device, without importing torch
    s = str(dev_type if dev_type is not None else device).strip().lower()
    return s.split(":", 1)[0]


_DTYPE_ALIASES = {"float": "float32", "fp32": "float32", "f32": "float32", "half": "float16", "fp16": "float16",
                  "f16": "float16", "bf16": "bfloat16", "double": "float64", "fp64": "float64", "f64": "float64"}


def normalize_dtype(dtype: Any) -> str:
    """Canonical dtype name: ``torch.float16`` / ``"fp16"`` / ``"half"`` -> ``"float16"``."""
    if dtype is None:
        return "float32"
    s = str(dtype).strip().lower().removeprefix("torch.")
    return _DTYPE_ALIASES.get(s, s)


#: device types torch knows (checked without importing torch).
KNOWN_DEVICE_TYPES = frozenset(("cpu", "cuda", "ipu", "xpu", "mkldnn", "opengl", "opencl", "ideep", "hip", "ve",
                                "fpga", "maia", "xla", "lazy", "vulkan", "mps", "meta", "hpu", "mtia", "privateuseone"))

#: dtype names torch knows (canonical spelling, see :func:`normalize_dtype`).
KNOWN_DTYPES = frozenset((
    "float32", "float16", "bfloat16", "float64", "complex64", "complex128", "complex32", "uint8", "uint16",
    "uint32", "uint64", "int8", "int16", "int32", "int64", "bool", "float8_e4m3fn", "float8_e5m2",
    "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "qint8", "quint8", "qint32"))


def check_device(device: Any, where: str) -> str:
    """The device type of ``device`` (see :func:`normalize_device`); :class:`CanvasTypeError` for a
    value that is not a device, :class:`SpecError` for a device type torch does not know."""
    if device is not None and getattr(device, "type", None) is None and not isinstance(device, str):
        raise CanvasTypeError(
            f"{where}: device must be a string such as 'cpu' / 'cuda:0' or a torch.device, "
            f"got {type(device).__name__} {device!r}")
    dev = normalize_device(device)
    raw = str(getattr(device, "type", None) or device or "cpu").strip().lower()
    index = raw.split(":", 1)[1] if ":" in raw else None
    if dev not in KNOWN_DEVICE_TYPES or (index is not None and not index.isdigit()):
        raise SpecError(
            f"{where}: unknown device {device!r}.{did_you_mean(dev, KNOWN_DEVICE_TYPES)} Use a torch "
            "device such as 'cpu', 'cuda', 'cuda:0' or 'mps'")
    return dev


def check_dtype(dtype: Any, where: str) -> str:
    """The canonical name of ``dtype`` (see :func:`normalize_dtype`); :class:`SpecError` when it
    is not a torch dtype."""
    if dtype is not None and not isinstance(dtype, str) and type(dtype).__name__ != "dtype":
        raise CanvasTypeError(
            f"{where}: dtype must be a string such as 'float32' / 'bf16' or a torch.dtype, "
            f"got {type(dtype).__name__} {dtype!r}")
    name = normalize_dtype(dtype)
    if name not in KNOWN_DTYPES:
        raise SpecError(
            f"{where}: unknown dtype {dtype!r}.{did_you_mean(name, KNOWN_DTYPES)} Use a torch dtype "
            "name such as 'float32', 'float16' or 'bfloat16'")
    return name


@dataclass(frozen=True)
class RuntimeContext:
    """Where an implementation is asked to run.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:0"``, ``"mps"`` or a ``torch.device``.
        dtype: ``"float32"``, ``"bfloat16"``, ... or a ``torch.dtype``.
        head_dim: per-head width, when known (kernels may restrict it).
        requires_grad: whether a backward pass is needed (training).
        preview: judge candidates as if ``device`` were present on this machine (a plan preview
            for a GPU machine, made on one without a GPU); everything else is still checked.
    """

    device: Any = "cpu"
    dtype: Any = "float32"
    head_dim: Optional[int] = None
    requires_grad: bool = True
    preview: bool = False

    def __post_init__(self) -> None:
        where = "RuntimeContext"
        check_device(self.device, where)
        check_dtype(self.dtype, where)
        hd = self.head_dim
        if hd is not None and (isinstance(hd, bool) or not isinstance(hd, int) or hd < 1):
            raise CanvasTypeError(f"{where}: head_dim must be a positive int or None, got {hd!r}")
        if not isinstance(self.requires_grad, bool):
            raise CanvasTypeError(f"{where}: requires_grad must be True or False, got {self.requires_grad!r}")
        if not isinstance(self.preview, bool):
            raise CanvasTypeError(f"{where}: preview must be True or False, got {self.preview!r}")

    @property
    def device_type(self) -> str:
        return normalize_device(self.device)

    @property
    def dtype_name(self) -> str:
        return normalize_dtype(self.dtype)

    def describe(self) -> str:
        hd = f", head_dim={self.head_dim}" if self.head_dim is not None else ""
        return (f"{self.device_type}/{self.dtype_name}{hd}" + ("" if self.requires_grad else ", inference")
                + (" (preview)" if self.preview else ""))

    @classmethod
    def coerce(cls, ctx: Any) -> "RuntimeContext":
        """``None`` -> the default CPU context; a dict -> ``RuntimeContext(**dict)``; a context as is."""
        if ctx is None:
            return cls()
        if isinstance(ctx, cls):
            return ctx
        if isinstance(ctx, dict):
            unknown = sorted(set(map(str, ctx)) - {"device", "dtype", "head_dim", "requires_grad", "preview"})
            if unknown:
                raise CanvasTypeError(
                    f"RuntimeContext: unknown key(s) {unknown}; expected device, dtype, head_dim, requires_grad, preview")
            return cls(**ctx)
        if isinstance(ctx, str):
            return cls(device=ctx)
        if hasattr(ctx, "device") and hasattr(ctx, "dtype"):  # a duck-typed context
            return cls(device=ctx.device, dtype=ctx.dtype, head_dim=getattr(ctx, "head_dim", None),
                       requires_grad=bool(getattr(ctx, "requires_grad", True)))
        raise CanvasTypeError(f"expected a RuntimeContext (or None / dict / device string), got {ctx!r}")


# The plugin layer never imports torch; it asks torch about CUDA only when the process has loaded
# it (a process that has not cannot have run anything on a GPU yet).
def cuda_status() -> Optional[bool]:
    """Whether CUDA can be used here: torch's answer when torch is loaded; False when torch is
    not even installed; None (unknown) when it is installed but this process has not loaded it."""
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            installed = importlib.util.find_spec("torch") is not None
        except (ImportError, ValueError):
            installed = False
        return None if installed else False
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA setup counts as none
        return False


def cuda_device_count() -> int:
    """How many CUDA devices the loaded torch sees; 0 when torch is not loaded or sees none."""
    torch = sys.modules.get("torch")
    try:
        return int(torch.cuda.device_count()) if torch is not None and torch.cuda.is_available() else 0
    except Exception:
        return 0
