"""Stand-ins for installed plugins (entry points of group ``canvas`` whose load runs a function),
a toy attention class, and a deadlock guard, shared by the plugin-loading tests."""

from __future__ import annotations

import threading
from typing import Any, Callable, List, Optional


class _Dist:
    def __init__(self, name: str) -> None:
        self.name, self.version = name, "0.1"


class FakeEntryPoint:
    """An entry point named ``name`` whose ``load()`` returns ``load()`` (the plugin's import:
    it may build a module, raise, or start threads), of distribution ``dist``
    (``canvas-plugin-<name>`` by default)."""

    def __init__(self, name: str, load: Callable[[], Any], dist: Optional[str] = None) -> None:
        self.name, self.value = name, f"fake_{name}"
        self.dist, self._load = _Dist(dist or f"canvas-plugin-{name}"), load

    def load(self) -> Any:
        return self._load()


class Attn:
    """A toy attention class (never built)."""

    def __init__(self, d_model: int, n_heads: int = 4, dropout: float = 0.0) -> None:
        self.d_model = d_model


def unhung(fn: Callable[[], Any], seconds: float = 60) -> None:
    """Run ``fn`` in a daemon thread; fail when it is still running after ``seconds`` (a deadlock),
    and raise what it raised."""
    errors: List[BaseException] = []

    def body() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn} hung: a deadlock"
    if errors:
        raise errors[0]
