"""Device and dtype names as torch spells them, checked without importing torch, and
:class:`RuntimeContext`, the target described with them: what the compiler resolves a plan for and
what the plugin layer's capability checks (a spec's ``devices=`` / ``dtypes=`` / ``check=``) judge;
the testing kit uses the same vocabulary."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, fields
from typing import Any, Optional

from canvas_core.errors import CanvasTypeError, SpecError, did_you_mean

#: device types torch knows.
KNOWN_DEVICE_TYPES = frozenset(("cpu", "cuda", "ipu", "xpu", "mkldnn", "opengl", "opencl", "ideep", "hip", "ve",
                                "fpga", "maia", "xla", "lazy", "vulkan", "mps", "meta", "hpu", "mtia", "privateuseone"))
#: dtype names torch knows, in the spelling :func:`normalize_dtype` gives.
KNOWN_DTYPES = frozenset((
    "float32", "float16", "bfloat16", "float64", "complex64", "complex128", "complex32", "uint8", "uint16",
    "uint32", "uint64", "int8", "int16", "int32", "int64", "bool", "float8_e4m3fn", "float8_e5m2",
    "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "qint8", "quint8", "qint32"))
DTYPE_ALIASES = {"float": "float32", "fp32": "float32", "f32": "float32", "half": "float16", "fp16": "float16",
                 "f16": "float16", "bf16": "bfloat16", "double": "float64", "fp64": "float64", "f64": "float64"}


def normalize_device(device: Any) -> str:
    """The device *type*: ``"cuda:1"`` / ``torch.device("cuda", 1)`` -> ``"cuda"``; None -> ``"cpu"``."""
    if device is None:
        return "cpu"
    dev_type = getattr(device, "type", None)  # torch.device, without importing torch
    return str(dev_type if dev_type is not None else device).strip().lower().split(":", 1)[0]


def normalize_dtype(dtype: Any) -> str:
    """``torch.float16`` / ``"fp16"`` / ``"half"`` -> ``"float16"``; None -> ``"float32"``."""
    if dtype is None:
        return "float32"
    s = str(dtype).strip().lower().removeprefix("torch.")
    return DTYPE_ALIASES.get(s, s)


def check_device(device: Any, where: str) -> str:
    """:func:`normalize_device`, refusing a non-device or a device type torch does not know."""
    if device is not None and getattr(device, "type", None) is None and not isinstance(device, str):
        raise CanvasTypeError(
            f"{where}: device must be a string such as 'cpu' / 'cuda:0' or a torch.device, "
            f"got {type(device).__name__} {device!r}")
    dev = normalize_device(device)
    _, colon, index = str(getattr(device, "type", None) or device or "cpu").strip().lower().partition(":")
    if dev not in KNOWN_DEVICE_TYPES or (colon and not index.isdigit()):
        raise SpecError(
            f"{where}: unknown device {device!r}.{did_you_mean(dev, KNOWN_DEVICE_TYPES)} Use a torch "
            "device such as 'cpu', 'cuda', 'cuda:0' or 'mps'")
    return dev


def check_dtype(dtype: Any, where: str) -> str:
    """:func:`normalize_dtype`, refusing a value that is not a torch dtype."""
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


def cuda_status() -> Optional[bool]:
    """Whether CUDA can be used: the loaded torch's answer; False without torch installed; None
    (unknown) while this process has not loaded torch (nothing here imports it)."""
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


def device_missing(device: Any) -> bool:
    """Whether this machine lacks the accelerator ``device`` names (``cuda``, ``mps``, ``xpu``,
    ...): False for ``cpu`` / ``meta``, and when it cannot be told (torch not loaded for CUDA, a
    backend with nothing to ask)."""
    kind = normalize_device(device)
    if kind in ("cpu", "meta"):
        return False
    if kind == "cuda":
        return cuda_status() is False
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    probe = torch.backends.mps if kind == "mps" else getattr(torch, kind, None)
    available = getattr(probe, "is_available", None)
    if not callable(available):
        return False  # no way to ask: compile for it as asked
    try:
        return not bool(available())
    except Exception:  # a broken backend counts as missing
        return True


def cuda_device_count() -> int:
    """CUDA devices the loaded torch sees (0 when torch is not loaded)."""
    torch = sys.modules.get("torch")
    try:
        return int(torch.cuda.device_count()) if torch is not None and torch.cuda.is_available() else 0
    except Exception:
        return 0


@dataclass(frozen=True)
class RuntimeContext:
    """Where an implementation is asked to run: a device (name or ``torch.device``), a dtype (name
    or ``torch.dtype``), the per-head width when known, whether a backward pass is needed, and
    ``preview``: judge as if ``device`` were present here (a GPU plan made on a CPU machine)."""

    device: Any = "cpu"
    dtype: Any = "float32"
    head_dim: Optional[int] = None
    requires_grad: bool = True
    preview: bool = False

    def __post_init__(self) -> None:
        check_device(self.device, "RuntimeContext")
        check_dtype(self.dtype, "RuntimeContext")
        hd = self.head_dim
        if hd is not None and (isinstance(hd, bool) or not isinstance(hd, int) or hd < 1):
            raise CanvasTypeError(f"RuntimeContext: head_dim must be a positive int or None, got {hd!r}")
        for flag in ("requires_grad", "preview"):
            if not isinstance(getattr(self, flag), bool):
                raise CanvasTypeError(f"RuntimeContext: {flag} must be True or False, got {getattr(self, flag)!r}")

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
        """None -> the default CPU context; a dict -> ``RuntimeContext(**dict)``; a device string;
        a context as is."""
        if ctx is None or isinstance(ctx, cls):
            return ctx or cls()
        if isinstance(ctx, dict):
            keys = [f.name for f in fields(cls)]
            unknown = sorted(set(map(str, ctx)) - set(keys))
            if unknown:
                raise CanvasTypeError(f"RuntimeContext: unknown key(s) {unknown}; expected {', '.join(keys)}")
            return cls(**ctx)
        if isinstance(ctx, str):
            return cls(device=ctx)
        raise CanvasTypeError(f"expected a RuntimeContext (or None / dict / device string), got {ctx!r}")
