"""The report every conformance suite returns, and the argument checks the suites share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

__all__ = ["ConformanceReport"]


@dataclass
class ConformanceReport:
    """Outcome of a conformance suite: what passed, what was skipped (and why), what failed."""

    name: str
    passed: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)
    failed: Dict[str, str] = field(default_factory=dict)
    details: Dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def __bool__(self) -> bool:
        return self.ok

    def summary(self) -> str:
        lines = [f"conformance of {self.name!r}: {len(self.passed)} passed, {len(self.skipped)} skipped, "
                 f"{len(self.failed)} failed"]
        lines += [f"  FAILED {p}: {m}" for p, m in self.failed.items()]
        lines += [f"  skipped {p}: {m}" for p, m in self.skipped.items()]
        return "\n".join(lines)


class Failed(Exception):
    """A property does not hold (its message says how)."""


def finish(report: ConformanceReport, raise_on_failure: bool, head: str) -> ConformanceReport:
    """Return ``report``, or raise ``AssertionError("<head>: [prop] why; ...")`` when a property failed."""
    if report.failed and raise_on_failure:
        raise AssertionError(f"{head}: "
                             + "; ".join(f"[{p}] {m}" for p, m in report.failed.items()))
    return report


def resolve_dtype(torch: Any, dtype: Any, where: str = "conformance suite") -> Any:
    """The torch floating dtype ``dtype`` names (None: float32); a non-dtype, an unknown name or
    an integer / bool dtype is refused before anything is built."""
    if dtype is None:
        return torch.float32
    if not isinstance(dtype, torch.dtype):
        from canvas_core.devices import check_dtype

        value = getattr(torch, check_dtype(dtype, where), None)  # CanvasTypeError / SpecError
        if not isinstance(value, torch.dtype):
            from canvas_core.errors import SpecError

            raise SpecError(f"{where}: unknown dtype {dtype!r}; use a torch dtype such as 'float32', 'float16' "
                            "or 'bfloat16'")
        dtype = value
    if not dtype.is_floating_point:
        from canvas_core.errors import SpecError

        raise SpecError(f"{where}: dtype={dtype} is not a floating-point dtype (attention runs on float "
                        "activations); pass e.g. dtype=torch.float32, 'float16' or 'bfloat16'")
    return dtype


def resolve_device(torch: Any, device: Any, where: str) -> Any:
    """The ``torch.device``; a non-device or an unknown type is refused, and so is a device this
    machine does not have (``UnavailableError``), before anything is built."""
    from canvas_core.devices import check_device
    from canvas_core.errors import SpecError, UnavailableError

    check_device(device, where)  # CanvasTypeError / SpecError for a non-device or an unknown type
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise SpecError(f"{where}: invalid device {device!r} ({exc}); use e.g. 'cpu' or 'cuda:0'") from None
    try:
        torch.empty(0, device=dev)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnavailableError(
            f"{where}: device={device!r} cannot be used on this machine ({first}); run the check where "
            "that device is present, or pass device='cpu' (skip the test when it is missing, e.g. "
            "pytest.mark.skipif(not torch.cuda.is_available(), ...))") from None
    return dev


def check_seed(where: str, seed: Any) -> None:
    from canvas_core.errors import CanvasTypeError

    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63 - 2 ** 20:
        raise CanvasTypeError(f"{where}: seed must be a non-negative int (a torch random seed), got {seed!r}")


def check_flags(where: str, **flags: Any) -> None:
    from canvas_core.errors import CanvasTypeError

    for key, v in flags.items():
        if not isinstance(v, bool):
            raise CanvasTypeError(f"{where}: {key} must be True or False, got {type(v).__name__} {v!r}")


def check_sizes(where: str, **sizes: Any) -> None:
    from canvas_core.errors import CanvasTypeError

    for key, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise CanvasTypeError(f"{where}: {key} must be a positive int, got {v!r}")


def check_target(name: Any, where: str, kind: str, distribution: Optional[str] = None) -> None:
    """A registered name (UnknownNameError when it is not) or a callable factory.  A name is
    refused (PluginError naming both providers) when it resolves to another distribution than
    ``distribution`` (when given), or when a plugin's registration of it was refused because a
    builtin has it: the kit would test the builtin instead of the plugin's type."""
    from canvas_core.errors import CanvasTypeError, PluginError

    if isinstance(name, str):
        from canvas_core.plugins import get_registry, get_spec
        from canvas_core.plugins.hints import normalize_dist

        spec = get_spec(kind, name)  # raises UnknownNameError naming the closest registered name
        shadowed = get_registry(kind).shadowed().get(name)
        if shadowed:
            raise PluginError(f"{where}: {name!r} resolves to {spec.describe_provider()}, not to the plugin that "
                              f"also registered it (refused, a builtin has the name): {shadowed[0]} Rename "
                              "the plugin's type and test that name")
        if distribution is not None and normalize_dist(spec.distribution) != normalize_dist(distribution):
            raise PluginError(f"{where}: {name!r} resolves to {spec.describe_provider()}, not to the "
                              f"distribution under test {distribution!r}; is your plugin installed, and is "
                              "the name its own (`canvas plugins` lists who provides what)?")
    elif not callable(name):
        raise CanvasTypeError(
            f"{where}: expected a registered name or a factory / class, got {type(name).__name__} {name!r}")
