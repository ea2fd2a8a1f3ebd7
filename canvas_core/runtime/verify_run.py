"""One run of :func:`~canvas_core.runtime.verify.verify_structure`: its settings, its seeded
random draws (the torch generator of the probe inputs and cotangents, the numpy one of the sampled
queries), the findings it gathers into a :class:`~canvas_core.runtime.verify_report.StructureReport`,
and the small helpers every probe shares: the model's device and dtype, a standard-normal input
maker, and the mode switch (evaluation mode, gradients on) the model is probed under."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from canvas_core.errors import CanvasTypeError
from canvas_core.runtime.verify_guard import refuse_non_floating
from canvas_core.runtime.verify_probe import PositionLabels, _first_tensor, choose_queries, mixes_batch, probe_rows
from canvas_core.runtime.verify_report import DeadLink, StructureReport, UndeclaredDependency


class _Run:
    """Settings and accumulated results of one verification."""

    def __init__(self, max_exact: int, samples: int, probes: int, chunk: int, rtol: float, seed: int,
                 require_signal: bool = False, progress: Optional[Callable[[str, int, int], None]] = None) -> None:
        self.max_exact, self.samples, self.probes, self.chunk, self.rtol = max_exact, samples, probes, chunk, rtol
        self.progress, self.require_signal = progress, require_signal
        self.gen = torch.Generator().manual_seed(int(seed))
        self.rng = np.random.default_rng(int(seed))
        # the value check's own draws: the gradient probe's (and so its reports) stay as they were
        self.value_gen = torch.Generator().manual_seed((int(seed) + 1) % 2 ** 64)
        self.value_rng = np.random.default_rng(int(seed) + 1)
        self.undeclared: List[UndeclaredDependency] = []
        self.dead: List[DeadLink] = []
        self.parts: List[str] = []
        self.notes: List[str] = []
        self.blind = False  # a whole layer / model whose output carried no gradient
        self.exact, self.sampling, self.n, self.hops = True, "", 0, 1

    def queries(self, n: int, labels: PositionLabels) -> np.ndarray:
        q, exact, why = choose_queries(n, labels, self.max_exact, self.samples, self.rng)
        self.exact, self.sampling, self.n = self.exact and exact, why, n
        return q

    def probe(self, where: str, fn: Callable, make_input: Callable, queries: np.ndarray, n: int, whole: bool = False,
              allowed: Optional[np.ndarray] = None, cells: Optional[np.ndarray] = None) -> np.ndarray:
        """``whole``: the probed function is the layer or model itself, whose outputs must depend on some
        input (else nothing was measured: not verified).  ``allowed`` / ``cells``: see :func:`probe_rows`."""
        chunk = self.chunk
        if chunk > 1 and mixes_batch(fn, make_input, self.gen):
            chunk = 1
            self.notes.append(f"{where}: its outputs depend on other batch rows; probed one cotangent at a time")
        report = None if self.progress is None else (lambda done, total: self.progress(where, done, total))
        strength = probe_rows(fn, make_input, queries, n, probes=self.probes, chunk=chunk, gen=self.gen,
                              on_chunk=report, cells=cells, allowed=allowed)
        if whole and not strength.any():
            self.blind = True
            self.notes.append(f"{where}: NOT VERIFIED: its output depends on no input position by gradient (a "
                              "detached output, an argmax or sampling head?), so nothing could be measured; "
                              "verify the model up to the part that is differentiable")
        return strength

    def report(self) -> StructureReport:
        dead = self.require_signal and any(d.whole for d in self.dead)
        return StructureReport(ok=not self.undeclared and not dead and not self.blind, require_signal=self.require_signal, undeclared=self.undeclared,
                               dead=self.dead, exact=self.exact, sampling=self.sampling, parts=self.parts,
                               hops=self.hops, n_positions=self.n, probes=self.probes, rtol=self.rtol,
                               notes=self.notes)


def _device_dtype(model: nn.Module) -> Tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _randn(shape_tail: Tuple[int, ...], device: Any, dtype: Any) -> Callable[[int, torch.Generator], torch.Tensor]:
    def make(b: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randn((b,) + shape_tail, generator=gen).to(device=device, dtype=dtype)
    return make


@contextmanager
def _probing(model: nn.Module) -> Iterator[None]:
    """Evaluation mode and gradients on for the probe; the model's modes are restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        for m, t in modes:
            m.training = t


def output_items(out: Any, n: int, name: str, notes: List[str]) -> List[Optional[int]]:
    """Which items of a model's output ``out`` (its call at batch 1 on an ``n``-position canvas) the
    probe judges: ``[None]`` for a tensor (or an object with a ``.sample`` tensor); for a tuple or list,
    the index of every floating tensor item of shape ``(1, n, ...)``, each probed as its own part, with
    a note in ``notes`` for every other item (not per position, or an integer / bool one such as a
    padding mask or an argmax: nothing to judge it by).  A non-floating output is refused
    (:func:`refuse_non_floating`), as is a tuple / list without a floating per-position item."""
    if not isinstance(out, (tuple, list)):
        refuse_non_floating(_first_tensor(out), f"{name}(x)'s output")
        return [None]
    picked: List[Optional[int]] = []
    for i, item in enumerate(out):
        per_position = isinstance(item, torch.Tensor) and item.dim() >= 2 and tuple(item.shape[:2]) == (1, n)
        if per_position and (item.is_floating_point() or item.is_complex()):
            picked.append(i)
            continue
        if per_position:
            notes.append(f"model output[{i}] NOT PROBED: a {item.dtype} tensor (no gradient, no tolerance to compare "
                         "values by); return the floating values it is computed from to have them checked")
            continue
        got = f"shape {tuple(item.shape)}" if isinstance(item, torch.Tensor) else type(item).__name__
        notes.append(f"model output[{i}] NOT PROBED: a {got}, not a (B, {n}, ...) tensor of one output per "
                     "canvas position, so which positions it reads cannot be judged; return it as one from a "
                     "wrapper module to have it checked")
    if not picked:
        raise CanvasTypeError(f"verify_structure: {name}(x) returned a {type(out).__name__} of {len(out)} item(s), "
                              f"none a floating (B, {n}, D) tensor; it must return one (or a tuple / list holding "
                              "some)")
    return picked


def output_item(fn: Callable, i: Optional[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> item i of fn(x)`` (``i`` None: the output tensor itself, or its ``.sample``)."""
    def run(x: torch.Tensor) -> torch.Tensor:
        out = fn(x)
        if i is None:
            return _first_tensor(out)
        if not isinstance(out, (tuple, list)) or len(out) <= i or not isinstance(out[i], torch.Tensor):
            raise CanvasTypeError(f"verify_structure: the model's output changed structure between calls (item {i} "
                                  f"was a tensor, now {type(out).__name__}); it must return the same items each call")
        return out[i]
    return run
