"""Installing a canvas topology in a backbone: check everything, build once, then commit.

``BackboneAdapter.install_topology`` calls :func:`build_installation`, which lowers the topology
on the token layout, resolves every connection on the model's device, restricts the plan to the
tokens, builds the kernels and the gated modules of the non-softmax types, and refuses (with a
``CanvasError`` naming the connection) anything that cannot run inside this backbone -- all
before the model is touched.  It returns a ``commit`` callable that installs the result.
"""

from __future__ import annotations

import time
from typing import Any, Callable, List, Mapping, Optional, Tuple

import numpy as np
from torch import nn

from canvas_core.compiler.resolved import REFERENCE_KERNEL, ResolvedGroup
from canvas_core.errors import BackboneError, CanvasError
from canvas_core.looping.installed import BlockTopology, GatedTypeModule, InstalledTopology, _key, with_holders
from canvas_core.plugins.builtin import SOFTMAX_FAMILY
from canvas_core.runtime.key_sets import merge_cover
from canvas_core.runtime.kernels import REFERENCE_MODES

__all__ = ["build_installation", "remove_installation", "recorded_installation", "no_attention_message",
           "HOLDER_ATTR", "RECORD_ATTR"]

#: attribute of a block (or its looped wrapper) holding the gated modules of the non-softmax types
HOLDER_ATTR = "canvas_fn"
#: key of a model's ``__dict__`` holding its ``InstalledTopology`` while one is installed (found
#: there even once the canvas attention holding it was replaced)
RECORD_ATTR = "_canvas_installed_topology"


def _model_device_dtype(model: nn.Module) -> Tuple[Any, Any]:
    for p in model.parameters():
        return p.device, p.dtype
    import torch

    return torch.device("cpu"), torch.float32


def _conn_name(topology: Any, ci: int, fn: str) -> str:
    c = topology.connections[ci]
    return f"connection #{ci} {c.src!r} -> {c.dst!r} (fn {fn!r})"


def _probe_branch(gm: GatedTypeModule, fn: str, width: int, where: str, backbone: str,
                  installed: InstalledTopology, plan: Any) -> None:
    """A plugin type's module keeps the calling contract (else BackboneError naming the
    connection); record how the branch is gated and whether it can learn at initialisation."""
    from canvas_core.errors import AttentionContractError
    from canvas_core.runtime.canvas_attention import flag_connections
    from canvas_core.compiler.report import disprove_no_gradient
    from canvas_core.runtime.type_probe import (constant_branch, init_gradient_found, init_gradient_problem,
                                                is_builtin_module, probe_attention_module)

    if not is_builtin_module(gm.module):
        try:
            probe_attention_module(gm.module, fn, width, where, installed.runner)  # also at its real shapes
        except AttentionContractError as exc:  # its message already starts with the connection
            why = str(exc).removeprefix(f"{where}: ")
            raise BackboneError(f"{where} cannot run inside {backbone!r}: {why}") from exc
    if constant_branch(gm.module, fn, width, where):  # ``none``: its output is 0, so its gate never moves
        installed.module_roles[fn] = "own module with a constant output (0): nothing to learn, by design"
        return
    gate = ("one gate: the type's own (0 at init)" if gm.gate is None
            else "one gate: the block's (starts at 0)")
    problem = init_gradient_problem(gm.module, fn, width, gm.gate, where=where)
    wrong = not problem and init_gradient_found(gm.module, gm.gate) and any(
        [disprove_no_gradient(p, fn, f"inside {backbone!r}") for p in (installed.plan, plan)])
    installed.module_roles[fn] = f"own module, {gate}" + (
        "; NO GRADIENT AT INIT" if problem else "; learns from step 1" + " (its learns_at_init=False is wrong)" * wrong)
    if problem:
        for p in (installed.plan, plan):  # the canvas plan (the report's) and the token plan
            flag_connections(p, fn, f"inside {backbone!r}: {problem}")


def build_installation(adapter: Any, model: nn.Module, topology: Any, tokens: Any, targets: List[Any], *,
                       kernel: Any = None, kernel_options: Optional[Mapping[str, Any]] = None,
                       requires_grad: bool = True) -> Tuple[Callable[[], None], InstalledTopology]:
    """Check and build an installation of ``topology`` (see the module docstring).  Returns
    ``(commit, installed)``; nothing in ``model`` changes until ``commit()`` is called."""
    from canvas_core.compiler.lowering import lower
    from canvas_core.compiler.resolution import resolve_plan

    start = time.perf_counter()
    if kernel is not None and not isinstance(kernel, str):
        raise BackboneError(f"install_topology: kernel={kernel!r} ({type(kernel).__name__}) is not a kernel name; "
                            f"pass None, 'auto', a registered kernel name (e.g. 'reference') or a mode of the "
                            f"reference kernel {list(REFERENCE_MODES)}")
    from canvas_core.runtime.canvas_attention import _options, _probe_choices

    if not isinstance(requires_grad, bool):
        raise BackboneError(f"install_topology: requires_grad must be True or False, got {requires_grad!r}")
    kernel_options = _options(kernel_options, "install_topology")  # a dict, as a canvas layer's
    layout = tokens.layout
    plan = lower(topology, layout)  # unknown regions: TopologyError naming the connection
    device, dtype = _model_device_dtype(model)
    n_heads, head_dim = adapter.attention_shape(model)
    prefer = None if kernel in (None, "auto") or kernel in REFERENCE_MODES else kernel
    # once, for the model's device: unknown / unavailable types fail here, naming the connection
    plan = resolve_plan(plan, device=device.type, dtype=str(dtype).replace("torch.", ""), head_dim=head_dim,
                 kernel=prefer, kernel_must_apply=prefer is not None, requires_grad=requires_grad)
    native = set(SOFTMAX_FAMILY) | set(getattr(adapter, "native_types", ()))
    softmax, kernels = set(), {}
    for fn, g in plan.groups.items():
        rg = g.resolved
        if fn in native or (rg is not None and rg.fused):
            softmax.add(fn)
            # the reference modes are a user's explicit choice; else what the compiler resolved
            kernels[fn] = kernel if kernel in REFERENCE_MODES else rg
    if prefer not in (None, REFERENCE_KERNEL):  # a user's choice: one small call, as a canvas layer makes
        chosen = {fn: rg.kernel for fn, rg in kernels.items()
                  if isinstance(rg, ResolvedGroup) and rg.kernel is not None and rg.kernel.name == prefer}
        _probe_choices(chosen, "install_topology", n_heads, head_dim, kernel_options, device, dtype)
    installed = InstalledTopology(plan=plan, tokens=tokens, softmax_types=sorted(softmax), kernels=kernels,
                                  n_heads=n_heads, head_dim=head_dim, backbone=getattr(adapter, "name", ""),
                                  kernel_options=kernel_options, device=device)
    tp = installed.token_plan
    # a region that holds no token of the sequence cannot take part in a connection
    for ci, conn in enumerate(topology.connections):
        for side in ("src", "dst"):
            r = getattr(conn, side)
            if not any(tp.region_blocks.get(r, {}).values()):
                raise BackboneError(
                    f"{_conn_name(topology, ci, plan.fn_of_connection[ci])}: region {r!r} covers no token "
                    f"of the {adapter.name!r} attention sequence (its positions on the canvas hold no "
                    "token); place it on the token positions of adapter.token_layout(...) "
                    f"(regions there: {sorted(tokens.layout.regions)})")
    # the non-softmax types: where their modules may run, and the modules themselves
    module_fns = list(installed.module_types)
    per_block: List[Optional[nn.ModuleDict]] = [None] * len(targets)
    if module_fns:
        allowed, width, why = adapter.module_tokens(model, tokens)
        n = tp.n
        for fn in module_fns:
            g = tp.groups[fn]
            for ci in np.unique(g.conn):
                sel = g.conn == ci
                q_tok = tp.perm[merge_cover(n, g.q0[sel], g.q1[sel])]
                k_tok = tp.perm[merge_cover(n, g.k0[sel], g.k1[sel])]
                if allowed is not None and not (allowed[q_tok].all() and allowed[k_tok].all()):
                    raise BackboneError(
                        f"{_conn_name(topology, int(ci), fn)} cannot run inside {adapter.name!r}: {why}. "
                        "Use a softmax type (cross_attention) for it, or link only the tokens a "
                        "module can read")
        heads = n_heads if width % max(n_heads, 1) == 0 else 1
        from canvas_core.plugins.resolve import build_attention
        from canvas_core.runtime.type_call import check_attention_module

        for b in range(len(targets)):
            md = nn.ModuleDict()
            for fn in module_fns:
                rg = tp.groups[fn].resolved
                ci = int(tp.groups[fn].conn[0])
                try:  # built from the entry the compiler resolved: no registry lookup here
                    mod = build_attention(rg.attention, d_model=width, n_heads=heads, dropout=0.0,
                                          **rg.module_kwargs())
                    check_attention_module(mod, fn)
                except CanvasError as exc:
                    raise BackboneError(f"{_conn_name(topology, ci, fn)} cannot run inside {adapter.name!r}: "
                                        f"its module could not be built at width {width}: {exc}") from exc
                except Exception as exc:  # a plugin type's own constructor failing
                    raise BackboneError(f"{_conn_name(topology, ci, fn)} cannot run inside {adapter.name!r}: "
                                        f"building its module at width {width} failed with "
                                        f"{type(exc).__name__}: {exc}") from exc
                gm = GatedTypeModule(fn, mod).to(device=device, dtype=dtype)
                if b == 0:  # every block builds the same type: probe one
                    _probe_branch(gm, fn, width, _conn_name(topology, ci, fn), adapter.name, installed, tp)
                md[_key(fn)] = gm
            per_block[b] = md
    installed.install_seconds = time.perf_counter() - start
    holders = adapter.blocks(model)

    def commit() -> None:
        for i, t in enumerate(targets):
            md = per_block[i]
            if md is not None and i < len(holders):
                holders[i].add_module(HOLDER_ATTR, md)
            t.canvas_topology = BlockTopology(installed, md)
        installed.attention_owners = with_holders(model, _owners(model, targets))
        model.__dict__[RECORD_ATTR] = installed

    return commit, installed


def remove_installation(adapter: Any, model: nn.Module, targets: List[Any]) -> None:
    """Remove an installed topology (and its gated modules): the backbone's attention again.
    Also the canvas attention it was installed in that was replaced since (no longer in
    ``targets``, maybe kept elsewhere, e.g. by diffusers' ``fuse_qkv_projections``)."""
    ours = set()
    rec = model.__dict__.pop(RECORD_ATTR, None)
    old = [t for *_, t in getattr(rec, "attention_owners", ())]
    for t in [*targets, *old]:
        bt = getattr(t, "canvas_topology", None)
        if bt is not None:
            if getattr(bt, "modules", None) is not None:
                ours.add(id(bt.modules))
            t.canvas_topology = None
        for legacy in ("canvas_bias", "canvas_has_key"):
            if legacy in getattr(t, "__dict__", {}):
                setattr(t, legacy, None)
    for h in adapter.blocks(model):
        if HOLDER_ATTR in getattr(h, "_modules", {}):
            del h._modules[HOLDER_ATTR]
    # modules of this installation held elsewhere (e.g. by a block wrapped after the install)
    for m in list(model.modules()) if ours else ():
        if id(m._modules.get(HOLDER_ATTR)) in ours:
            del m._modules[HOLDER_ATTR]


def _owners(model: nn.Module, targets: List[Any]) -> Tuple[Tuple[int, Any, str, Any], ...]:
    """``(block, owner, attr, target)`` for each target found in ``model``: a diffusers
    ``Attention`` whose ``processor`` is the target, or the parent module holding the target."""
    want = {id(t): i for i, t in enumerate(targets)}
    found: dict = {}
    for m in model.modules():
        proc = m.__dict__.get("processor", m._modules.get("processor"))
        if id(proc) in want and proc is targets[want[id(proc)]]:
            found.setdefault(want[id(proc)], (m, "processor"))
        for name, child in m._modules.items():
            if id(child) in want and name != "processor":
                found.setdefault(want[id(child)], (m, name))
    return tuple((i, *found[i], targets[i]) for i in sorted(found))


def recorded_installation(model: nn.Module) -> Optional[InstalledTopology]:
    """The ``InstalledTopology`` last installed in ``model`` (None once removed)."""
    rec = getattr(model, "__dict__", {}).get(RECORD_ATTR)
    return rec if isinstance(rec, InstalledTopology) else None


def no_attention_message(adapter: Any, model: nn.Module) -> str:
    """Why ``install_topology`` finds no canvas attention in ``model``, and the fix."""
    rec = recorded_installation(model)
    if rec is not None and rec.replaced_attention():
        return rec.replaced_message(
            "install_topology is refused", "Call adapter.remove_topology(model) first, put canvas attention "
            "back (adapter.prepare(model) wraps the backbone's own processors again; after "
            "fuse_qkv_projections call model.unfuse_qkv_projections() instead), then install the topology")
    from canvas_core.looping.scopes import is_grafted

    if is_grafted(model, adapter.blocks(model)):
        return (f"adapter {adapter.name!r} finds no canvas attention in the blocks of the grafted "
                f"{type(model).__name__}: their attention was replaced after grafting (e.g. by "
                "set_attn_processor / fuse_qkv_projections) or is not of a kind this adapter replaces. Call "
                "adapter.prepare(model) to wrap the backbone's own attention again (after "
                "model.unfuse_qkv_projections() for fused processors), then install the topology")
    return (f"adapter {adapter.name!r} installed no canvas attention in {type(model).__name__}; "
            "call graft_looped_blocks first or adapter.prepare(model). If the model is "
            "grafted, its blocks' attention is not of a kind this adapter replaces, so "
            "topologies are not available for it")
