"""What a compiled module really runs: for plugin authors whose type ships a ``torch.library``
operator (or fuses work some other way) and wants a test that ``torch.compile`` keeps it.

``torch.compile(module, backend=recording_backend(seen))`` traces the forward and the backward
through AOTAutograd, runs the traced graphs as they are (no inductor, no C++ compiler needed), and
appends the target of every call in them to ``seen`` (strings such as ``"aten.mm.default"`` or
``"canvas_mamba.projected.default"``)::

    from canvas_core.testing import recording_backend

    seen = []
    out = torch.compile(module, backend=recording_backend(seen), fullgraph=True)(q, k, v)
    out.sum().backward()
    assert "my_plugin.my_op.default" in seen and "aten.exp.default" not in seen
"""

from __future__ import annotations

from typing import Any, Callable, List

__all__ = ["recording_backend"]


def recording_backend(seen: List[str]) -> Callable[..., Any]:
    """A ``torch.compile`` backend that runs the AOTAutograd forward and backward graphs
    unchanged and records the target of each of their ``call_function`` nodes in ``seen``."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    def keep(graph: Any, _inputs: Any) -> Any:
        seen.extend(str(n.target) for n in graph.graph.nodes if n.op == "call_function")
        return make_boxed_func(graph.forward)

    def backend(gm: Any, example_inputs: Any) -> Any:
        return aot_module_simplified(gm, example_inputs, fw_compiler=keep, bw_compiler=keep)

    return backend
