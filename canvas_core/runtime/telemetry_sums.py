"""The sums a telemetry layer probe (:class:`~canvas_core.runtime.telemetry._LayerProbe`) keeps:
added on the device as the recorded forwards run (no host sync per step), read back once per
recording (:meth:`_ProbeSums.flush`), and turned into running means and the ``mass_share`` /
``out_norm`` values of each connection (:meth:`_ProbeSums.values`)."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Tuple

import numpy as np
import torch


class _Mean:
    __slots__ = ("total", "count")

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else 0.0


class _ProbeSums:
    """The running sums of a layer probe and what is read from them; the probe's ``__init__`` sets
    the attributes annotated here."""

    labels: Dict[int, str]  # connection index -> its series label
    fn_of: Dict[int, str]  # connection index -> its fn type
    conn_share: Dict[int, np.ndarray]  # non-softmax connection -> its weight share at the sampled queries
    unlinked: List[int]  # connections that link no query
    forwards: int  # measured forwards
    live: bool  # whether a measured forward runs now (fn modules' outputs count)
    module_norm: Dict[str, _Mean]  # other type -> mean row norm of its module's output
    _stats: Dict[str, _Mean]  # label/stat -> running mean
    _pending: Dict[Tuple[Any, ...], torch.Tensor]  # (type, device) -> (connections, 3) sums not read back
    _norm_pending: Dict[Tuple[Any, ...], torch.Tensor]  # (type, device) -> (sum, rows) not read back

    @property
    def stats(self) -> Dict[str, _Mean]:
        """``{label/stat: running mean}`` of the softmax-family statistics measured so far."""
        self.flush()
        return self._stats

    def flush(self) -> None:
        """Add the sums still on the device to :attr:`stats`."""
        pending, self._pending = self._pending, {}
        norms, self._norm_pending = self._norm_pending, {}
        for (fn, _), (total, rows) in ((k, v.tolist()) for k, v in norms.items()):
            m = self.module_norm.setdefault(fn, _Mean())
            m.total, m.count = m.total + total, m.count + int(rows)
        for sums in pending.values():
            for ci, (mass_sum, norm_sum, count) in enumerate(sums.tolist()):
                if count:  # else every sample was non-finite at its queries: nothing measured
                    for key, total in ((f"{self.labels[ci]}/mass_share", mass_sum), (f"{self.labels[ci]}/out_norm", norm_sum)):
                        m = self._stats.setdefault(key, _Mean())
                        m.total, m.count = m.total + total, m.count + int(count)

    def checkpoint(self):
        """A function that puts back what is measured now (the sums not read back are replaced, not
        added to, so a shallow copy keeps them): a failed rollout step measured nothing."""
        forwards, pending, norms = self.forwards, dict(self._pending), dict(self._norm_pending)

        def restore() -> None:
            self.forwards, self._pending, self._norm_pending = forwards, pending, norms
        return restore

    def module_output(self, fn: str, out: Any) -> None:  # a call of fn's module in a measured forward
        if self.live:
            self.add_rows([(fn, out)])

    @torch.no_grad()
    def add_rows(self, outputs: Iterable[Tuple[str, Any]]) -> None:
        """Add the row norms of each ``(fn, out)``, ``out`` ``(..., D)`` rows of type ``fn``'s module
        output, to its mean (every row weighs the same, as every query of the softmax statistics; a
        row that is not finite is left out); the sums stay on the device until they are read."""
        for fn, out in outputs:
            if not (isinstance(out, torch.Tensor) and out.dim() >= 2 and out.numel() and out.is_floating_point()):
                continue
            norms = (out if out.dtype == torch.float64 else out.float()).norm(dim=-1).flatten()
            ok = norms.isfinite()
            part = torch.stack([torch.where(ok, norms, 0.0).sum(), ok.sum()]).double()
            key = (fn, str(out.device))  # and not in place, as one made under inference mode is read outside
            self._norm_pending[key] = part if key not in self._norm_pending else self._norm_pending[key] + part

    def values(self) -> Dict[str, float]:
        out = {k: m.value for k, m in self.stats.items()}
        if not self.forwards:  # nothing measured: no shares from the weights alone either
            return out
        for ci in self.unlinked:  # no query, so no output comes through it: 0, not a missing series
            out[f"{self.labels[ci]}/mass_share"] = out[f"{self.labels[ci]}/out_norm"] = 0.0
        for ci, share in self.conn_share.items():
            at = share > 0
            if not at.any():
                continue
            fn = self.fn_of[ci]
            out[f"{self.labels[ci]}/mass_share"] = float(share[at].mean())
            norm = self.module_norm.get(fn)
            if norm is not None and norm.count:
                out[f"{self.labels[ci]}/out_norm"] = float(share[at].mean() * norm.value)
        return out
