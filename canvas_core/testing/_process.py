"""The process state an attention type must leave alone, for the conformance kit.

Every build and every property of :func:`~canvas_core.testing.check_attention_type` runs inside
:meth:`ProcessGuard.watch`: torch's default dtype and the global random state (CPU, and the
kit's CUDA device) are put back afterwards, and a changed default dtype is noted.  The
``process state`` property then reports what was noted, and whether the type reseeds the global
random generator (:func:`reseeds`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, List, Optional

from canvas_core.testing._report import Failed

__all__ = ["ProcessGuard", "reseeds"]


class ProcessGuard:
    """Restores torch's default dtype and random state around each block; notes what changed."""

    def __init__(self, torch: Any, device: Any) -> None:
        self.torch = torch
        self.devices = [device] if getattr(device, "type", None) == "cuda" else []
        self.changes: List[str] = []

    @contextlib.contextmanager
    def watch(self, during: str) -> Iterator[None]:
        """``during``: what runs inside (``"building it"``, ``"property 'gradients'"``), for the note."""
        torch = self.torch
        dtype = torch.get_default_dtype()
        try:
            with torch.random.fork_rng(devices=self.devices):  # the kit seeds its calls: never the caller's RNG
                yield
        finally:
            now = torch.get_default_dtype()
            if now != dtype:
                torch.set_default_dtype(dtype)
                note = f"{during} changes the process's default dtype from {dtype} to {now}"
                if note not in self.changes:
                    self.changes.append(note)

    def check(self, call: Callable[[], Any]) -> Optional[str]:
        """The ``process state`` property: a noted default-dtype change, then a reseed, fails."""
        if self.changes:
            raise Failed(self.changes[0] + " (torch.set_default_dtype in its constructor or forward "
                         "changes every tensor the rest of the program makes; restored after each call here, "
                         "but a canvas layer does not: build parameters with an explicit dtype instead)")
        if reseeds(self.torch, call):
            raise Failed("its forward reseeds the global RNG (torch.manual_seed / torch.seed): the random "
                         "state after a call does not depend on the state before it, which makes every later "
                         "draw of the program (dropout, sampling, initialisation) repeat; use a "
                         "torch.Generator of its own")
        return None


def reseeds(torch: Any, call: Callable[[], Any]) -> bool:
    """Whether ``call()`` sets the global random state to a fixed one: started from two different
    states, it ends in the same state (a call that draws numbers or draws none keeps them apart)."""
    ends = []
    for seed in (101, 202):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with torch.no_grad():
                call()
            ends.append(torch.random.get_rng_state())
    return bool(torch.equal(ends[0], ends[1]))
