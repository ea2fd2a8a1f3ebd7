"""Test helper: what an autograd graph holds."""

from __future__ import annotations

import torch


def graph_node_names(t: torch.Tensor) -> set:
    """The class names of every autograd node ``t`` depends on (``SplitBackward0``, a custom
    function's ``...Backward``), found by walking ``grad_fn.next_functions``."""
    seen, todo, names = set(), [t.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(n for n, _ in node.next_functions)
    return names
