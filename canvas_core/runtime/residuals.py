"""Residual signal tracking: EMA summaries of error tensors, for event clocks and diagnostics."""

from __future__ import annotations

import warnings

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from canvas_core.errors import CanvasTypeError, UnknownRegionError, did_you_mean

__all__ = ["ResidualSpec", "ResidualAccumulator", "REDUCE_MODES"]

REDUCE_MODES = ("max_mean", "mean", "max", "l2")


@dataclass(frozen=True)
class ResidualSpec:
    """What error signals a region emits and how to summarise them.

    Args:
        kinds: names of the tracked signals; each gets a running scalar.
        reduce: error tensor -> scalars: ``"max_mean"`` = ``[max, mean]`` cycled over the kinds
            (kind 0 max, kind 1 mean, kind 2 max, ...), ``"mean"``, ``"max"`` or ``"l2"``
            (Frobenius norm) for every kind.  Values are signed (pass ``err.abs()`` for
            magnitudes).
        decay: EMA factor: ``summary = decay * old + (1 - decay) * new``, in ``[0, 1)``.
    """

    kinds: Tuple[str, ...] = ("prediction",)
    reduce: str = "max_mean"
    decay: float = 0.95

    def __post_init__(self) -> None:
        try:
            kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        except TypeError:
            raise CanvasTypeError(f"ResidualSpec: kinds must be a string or a sequence of strings, "
                                  f"got {self.kinds!r}") from None
        if not kinds or not all(isinstance(k, str) and k for k in kinds):
            raise CanvasTypeError(
                f"ResidualSpec: kinds must be non-empty strings, got {self.kinds!r}"
            )
        if len(set(kinds)) != len(kinds):
            raise CanvasTypeError(f"ResidualSpec: kinds must be distinct, got {kinds!r}")
        object.__setattr__(self, "kinds", kinds)
        if self.reduce not in REDUCE_MODES:
            raise CanvasTypeError(
                f"ResidualSpec: reduce={self.reduce!r} is unknown; choose from {REDUCE_MODES}"
            )
        if (
            isinstance(self.decay, bool)
            or not isinstance(self.decay, (int, float))
            or not 0 <= self.decay < 1
        ):
            raise CanvasTypeError(
                f"ResidualSpec: decay must be a float in [0, 1), got {self.decay!r}"
            )


class ResidualAccumulator(nn.Module):
    """Running EMA summaries ``(n_regions, n_kinds)`` of error signals (no parameters).

    ``update(region, error)`` reduces ``error`` (any shape) per the spec and blends it in;
    summaries start at 0.  Buffers (``summary``, ``step_counts``) follow ``.to(device)`` and the
    state dict.
    """

    def __init__(self, region_names: Sequence[str], spec: Optional[ResidualSpec] = None) -> None:
        super().__init__()
        if not isinstance(region_names, str) and not hasattr(region_names, "__iter__"):
            raise CanvasTypeError(
                "ResidualAccumulator: region_names must be a sequence of region names, got "
                f"{type(region_names).__name__} {region_names!r}"
            )
        if spec is not None and not isinstance(spec, ResidualSpec):
            raise CanvasTypeError(
                f"ResidualAccumulator: spec must be a ResidualSpec or None, got {type(spec).__name__} {spec!r}"
            )
        names = [region_names] if isinstance(region_names, str) else list(region_names)
        if len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
            raise CanvasTypeError(
                f"ResidualAccumulator: region_names must be distinct strings, got {names!r}"
            )
        self._names: List[str] = names
        self._index: Dict[str, int] = {n: i for i, n in enumerate(names)}
        self.spec = spec if spec is not None else ResidualSpec()
        self.register_buffer("summary", torch.zeros(len(names), len(self.spec.kinds)))
        self.register_buffer("step_counts", torch.zeros(len(names), dtype=torch.long))
        #: region -> number of updates skipped because the error held NaN or inf (not saved)
        self.nonfinite_updates: Dict[str, int] = {}

    @property
    def region_names(self) -> List[str]:
        return list(self._names)

    def _reduce(self, error: torch.Tensor) -> torch.Tensor:
        e = error.detach().float().reshape(-1)
        n = len(self.spec.kinds)
        if e.numel() == 0:
            return torch.zeros(n, device=e.device)
        mode = self.spec.reduce
        if mode == "max_mean":
            pair = torch.stack([e.max(), e.mean()])
            return pair[torch.arange(n, device=e.device) % 2]
        value = {"mean": e.mean, "max": e.max, "l2": lambda: e.norm()}[mode]()
        return value.expand(n)

    def update(self, region: str, error: torch.Tensor) -> None:
        """Blend ``error`` (any shape; a Python number is accepted) into ``region``'s summary.

        An ``error`` holding NaN or inf is skipped with a ``RuntimeWarning``: the summary and the
        step count stay as they were (one bad step would otherwise poison the decayed summary
        for good), and ``nonfinite_updates[region]`` counts the skipped updates; so is a finite
        ``error`` whose summary would overflow the summary's dtype."""
        i = self._index.get(region)
        if i is None:
            raise UnknownRegionError(
                f"ResidualAccumulator: unknown region {region!r}; "
                f"tracked regions are {self._names}." + did_you_mean(region, self._names)
            )
        if not isinstance(error, torch.Tensor):
            try:
                error = torch.as_tensor(error, dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise CanvasTypeError(
                    f"ResidualAccumulator.update: the error of region {region!r} must be a tensor or "
                    f"a (nested list of) number(s), got {type(error).__name__} {error!r:.80} ({exc})"
                ) from None
        if error.device.type == "meta":
            raise CanvasTypeError(
                f"ResidualAccumulator.update: the error of region {region!r} is on the meta device (no "
                "values); pass a tensor with real values")
        if error.is_complex():
            raise CanvasTypeError(
                f"ResidualAccumulator.update: the error of region {region!r} must be real, got {error.dtype}; "
                "pass error.abs() for magnitudes"
            )
        new = self._reduce(error).to(self.summary.device)
        d = self.spec.decay
        with torch.no_grad():
            blended = (d * self.summary[i] + (1.0 - d) * new).to(self.summary.dtype)
            ok = torch.isfinite(blended).all()  # one host sync for both checks on the usual path
            if error.is_floating_point():  # kept apart: a "max" summary of an error holding -inf is finite
                ok = ok & torch.isfinite(error).all().to(ok.device)
            if not bool(ok):
                # a NaN / inf error would poison the running summary for good, and so would finite
                # values whose summary overflows (a float64 error beyond float32, a float16
                # accumulator): either way this update is skipped
                bad_error = error.is_floating_point() and not bool(torch.isfinite(error).all())
                self.nonfinite_updates[region] = self.nonfinite_updates.get(region, 0) + 1
                why = ("contains NaN or inf" if bad_error else
                       f"overflows the {self.summary.dtype} summary (NaN or inf)")
                warnings.warn(
                    f"ResidualAccumulator.update: the error of region {region!r} {why}; this update is "
                    "skipped (summary and step count unchanged; see nonfinite_updates)", RuntimeWarning, stacklevel=2)
                return
            if self.summary.is_inference() and not torch.is_inference_mode_enabled():
                # built under torch.inference_mode: its buffers cannot change outside it
                self.summary, self.step_counts = self.summary.clone(), self.step_counts.clone()
            self.summary[i] = blended
            self.step_counts[i] += 1

    def summaries(self) -> Dict[str, Dict[str, float]]:
        """``{region: {kind: value}}`` as plain floats."""
        vals = self.summary.tolist()
        return {n: dict(zip(self.spec.kinds, vals[i])) for i, n in enumerate(self._names)}

    def summary_tensor(self) -> torch.Tensor:
        """The raw ``(n_regions, n_kinds)`` summary (a copy)."""
        return self.summary.clone()

    def reset(self) -> None:
        """Set every summary and count to zero."""
        with torch.no_grad():
            self.summary.zero_()
            self.step_counts.zero_()

    def __repr__(self) -> str:
        from canvas_core._reprs import accumulator_repr  # canvas-engineering's text

        return accumulator_repr(self)
