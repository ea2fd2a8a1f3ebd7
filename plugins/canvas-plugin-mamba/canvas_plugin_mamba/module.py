"""``MambaAttention``: a selective state-space (S6) operator as a canvas attention type."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from canvas_core.errors import CanvasTypeError, CheckpointError, ShapeError, UnavailableError
from canvas_core.extend import (as_dtype, autocast_on, causal_read, causal_read_index, check_elements, check_size,
                                normalize_key_mask, operators_under_compile, plain_linear, plain_module)
from canvas_plugin_mamba import cpu_kernel, cpu_ops
from canvas_plugin_mamba.chunked import chunk_size, selective_scan_read
from canvas_plugin_mamba.conv_op import causal_depthwise_conv
from canvas_plugin_mamba.inner_op import _softplus as softplus_f32
from canvas_plugin_mamba.inner_op import _softplus_grad as softplus_f32_grad
from canvas_plugin_mamba.inner_op import mamba_inner
from canvas_plugin_mamba.proj_op import mamba_projected
from canvas_plugin_mamba.scan import selective_scan_mamba_ssm

__all__ = ["MambaAttention", "KERNELS"]

#: accepted values of ``kernel``
KERNELS = ("auto", "mamba_ssm", "mamba_cpu", "mamba_torch")
#: run the fused inner operator in eager mode too (tests compare the two paths with it)
_FUSE_EAGER = False
#: the fused path takes the projections into its operator too (``proj_op.py``); False keeps them
#: outside (``inner_op.py`` only, as with active dropout); tests and benchmarks compare the two
_FUSE_PROJECTIONS = True


@torch.compiler.assume_constant_result
def _settle_cpu_kernel() -> bool:
    """Decide (build or load) the compiled CPU scan, run for real when ``torch.compile`` traces a
    first call: the decision takes a lock and may run the compiler, which dynamo cannot trace (a
    module compiled before any eager call stopped there); afterwards the traced checks only read
    the settled state."""
    return cpu_kernel.available()


def _mamba_ssm_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("mamba_ssm") is not None
    except (ImportError, ValueError):
        return False


class _Softplus(torch.autograd.Function):
    """float32 ``softplus(x) = relu(x) + log(1 + e^-|x|)`` (equal to ``F.softplus`` to float32
    rounding), gradient ``sigmoid(x)``.  ``F.softplus`` goes through ``log1p``, which this
    CPU build does not vectorise: several times the cost of the rest of the delta projection."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return softplus_f32(x)  # the fused operator's own arithmetic (same values)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return softplus_f32_grad(g, x)


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """``F.softplus``; float32 on CPU through :class:`_Softplus` (float64 stays exact)."""
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return _Softplus.apply(x)
    return F.softplus(x)


def _int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise CanvasTypeError(f"mamba: {name} must be an int >= {lo}, got {v!r}")
    return v


class MambaAttention(nn.Module):
    """Selective state-space attention (``mamba``; S6 as in Mamba, Gu & Dao 2023).

    The SSM runs causally over the key/value sequence (the connection's destination positions,
    length ``L = Nk``; expanded width ``E = expand * d_model``, state size ``N = d_state``):

    * ``u = silu(causal_depthwise_conv(W_in values))`` (kernel ``d_conv``),
    * selection from the keys: ``delta = softplus(W_dt (W_x keys)_dt + b_dt)``,
      ``B_t = (W_x keys)_B``,
    * ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t`` with ``A = -exp(A_log)`` diagonal.

    Queries read the sequence at their causal read position ``p(i) = ceil((i + 1) Nk / Nq) - 1``
    (:func:`canvas_core.extend.causal_read_index`; ``Nq == Nk``: position-aligned, the usual causal
    Mamba output; ``Nq == 1``: the final state; ``Nq > Nk``: at least key 0) with their own
    readout and gate:
    ``y_i = C(q_i) . h_{p(i)} + D u_{p(i)}``, ``out_i = W_out(y_i * silu(W_z q_i))``.

    Key mask: the scan is shared by all queries, so it skips the keys no query may attend
    (``delta = 0`` and ``u = 0`` there: no decay, no write); a query whose allowed keys up to
    ``p(i)`` are empty outputs zeros.  Per-query differences beyond that are not modelled.

    Args (positional order and defaults as canvas-engineering's ``MambaAttention``):
        d_model, n_heads, dropout: as every attention type (``n_heads`` is validated only).
        state_size: Mamba's state size ``N``.
        dt_rank: rank of the ``delta`` projection (0 = ``ceil(d_model / 16)``).

    Keyword-only (canvas-core):
        d_state: Mamba's own name for ``state_size`` (alias; giving both with different values
            is an error).
        d_conv: Mamba's causal conv width.
        expand: inner width ``E = expand * d_model``.  Default 1: canvas-engineering's
            ``MambaAttention`` keeps its state at ``d_model`` channels, so this is the peer's
            state size and work; ``expand=2`` is the Mamba paper's block (twice the state, the
            parameters and the scan cost).  Earlier builds defaulted to 2: give ``expand=2``
            to load their checkpoints of a default ``mamba`` module.
        kernel: ``"auto"`` (on CUDA, mamba-ssm's ``selective_scan_fn`` when installed and
            ``Nq == Nk``; on the CPU, the compiled scan of :mod:`canvas_plugin_mamba.cpu_kernel`
            when it can be built; the PyTorch scan otherwise), ``"mamba_ssm"``, ``"mamba_cpu"``
            (an error naming the reason when it cannot be built; ``d_state`` above 64: the
            PyTorch scan) or ``"mamba_torch"`` (the PyTorch scan, any device).  The choice of the
            last call is in ``self.kernel_used``.
    """

    type_name = "mamba"
    beta: Optional[float] = None  # not a softmax type

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        dropout: float = 0.0,
        state_size: int = 16,
        dt_rank: int = 0,
        *,
        d_state: Optional[int] = None,
        d_conv: int = 4,
        expand: int = 1,
        kernel: str = "auto",
    ) -> None:
        super().__init__()
        if d_state is None:
            d_state_name, d_state = "state_size", state_size
        else:  # Mamba's name for state_size
            if state_size != 16 and state_size != d_state:
                raise CanvasTypeError(
                    f"mamba: state_size={state_size!r} and d_state={d_state!r} name the same "
                    "setting; give one of them"
                )
            d_state_name = "d_state"
        _int("d_model", d_model, 1)
        _int("n_heads", n_heads, 1)
        if d_model % n_heads:
            raise ShapeError(f"mamba: d_model={d_model} is not divisible by n_heads={n_heads}")
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, (int, float))
            or not 0 <= dropout <= 1
        ):
            raise CanvasTypeError(f"mamba: dropout must be a float in [0, 1], got {dropout!r}")
        self.d_state = self.state_size = _int(d_state_name, d_state, 1)
        self.d_conv = _int("d_conv", d_conv, 1)
        self.expand = _int("expand", expand, 1)
        if kernel not in KERNELS:
            raise CanvasTypeError(f"mamba: unknown kernel {kernel!r}; choose from {KERNELS}")
        self.kernel = kernel
        self.kernel_used: Optional[str] = None
        self._ssm_available = _mamba_ssm_available()  # looked up once (compile-friendly)
        self.d_model, self.n_heads = d_model, n_heads
        E = self.d_inner = expand * d_model
        _int("dt_rank", dt_rank, 0)
        R = self.dt_rank = dt_rank or math.ceil(d_model / 16)
        # every size is a dimension of some weight: refuse runaway ones before allocating
        for name, v in (("d_model", d_model), (d_state_name, d_state), ("d_conv", d_conv), ("dt_rank", R),
                        (f"inner width expand * d_model (expand={expand}, d_model={d_model})", E)):
            check_size("width", v, f"attention type 'mamba' {name}")
        check_elements((E, max(d_model, d_state, R, d_conv)),
                       "attention type 'mamba' largest weight (expand * d_model, max(d_model, d_state, dt_rank, d_conv))")
        self.in_proj = nn.Linear(d_model, E)
        self.conv1d = nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_model, R + d_state, bias=False)
        self.dt_proj = nn.Linear(R, E)
        self.c_proj = nn.Linear(d_model, d_state, bias=False)
        self.z_proj = nn.Linear(d_model, E)
        self.out_proj = nn.Linear(E, d_model)
        self.drop = nn.Dropout(float(dropout))
        # Mamba init: A_n = -(n + 1); softplus(b_dt) log-uniform in [1e-3, 1e-1]
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, d_state + 1, dtype=torch.promote_types(torch.get_default_dtype(), torch.float32)))
            .repeat(E, 1).to(torch.get_default_dtype())
        )
        self.D = nn.Parameter(torch.ones(E))
        dt = torch.exp(torch.rand(E) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    # ------------------------------------------------------------------ helpers
    def _choose_kernel(self, x: torch.Tensor, Nq: int, Nk: int) -> str:
        if self.kernel == "mamba_torch":
            return "mamba_torch"
        if torch.compiler.is_compiling() and x.device.type == "cpu":
            _settle_cpu_kernel()
        if self.kernel == "mamba_cpu":
            if x.device.type != "cpu":
                raise UnavailableError(f"mamba: kernel='mamba_cpu' runs on the CPU, the inputs are on {x.device}; "
                                       "use kernel='auto'")
            cpu_kernel.require()
            # a state larger than the kernel's registers: the PyTorch scan (as mamba_ssm with Nq != Nk;
            # a compiled program's CPU mamba groups all get kernel='mamba_cpu')
            return "mamba_cpu" if self.d_state <= cpu_kernel.MAX_STATE else "mamba_torch"
        if self.kernel == "auto" and cpu_kernel.usable_for(x, self.d_state):
            return "mamba_cpu"
        cuda_ok = x.is_cuda and self._ssm_available
        if self.kernel == "mamba_ssm":
            if not cuda_ok:
                raise UnavailableError(
                    "mamba: kernel='mamba_ssm' needs CUDA tensors and the mamba-ssm package "
                    "(pip install 'canvas-plugin-mamba[cuda]'); use kernel='auto' or 'mamba_torch'"
                )
            return "mamba_ssm" if Nq == Nk else "mamba_torch"  # cross-length reads need all states
        return "mamba_ssm" if cuda_ok and Nq == Nk else "mamba_torch"

    def _one_dtype(self, values: torch.Tensor) -> bool:
        """The fused path's condition: float32 / float64 inputs, the parameters in that dtype and
        no autocast (every projection then outputs the working dtype, as the unfused path's casts
        would leave it)."""
        dt = values.dtype
        if dt not in (torch.float32, torch.float64) or autocast_on(values.device.type):
            return False
        return all(p.dtype == dt for p in (self.A_log, self.D, self.conv1d.weight, self.in_proj.weight,
                                            self.dt_proj.weight, self.x_proj.weight, self.c_proj.weight,
                                            self.z_proj.weight, self.out_proj.weight))

    def _plain_projections(self) -> bool:
        """Every projection an ``nn.Linear`` without hooks (weight norm, adapters, probes: the
        operator would bypass them), with the biases it was built with (what the projected
        operator computes), and no dropout active between ``y`` and ``out_proj``."""
        if self.drop.p > 0 and self.training:
            return False
        built = ((self.in_proj, True), (self.x_proj, False), (self.dt_proj, True), (self.c_proj, False),
                 (self.z_proj, True), (self.out_proj, True))
        if not all(plain_linear(m, with_bias=b) for m, b in built):
            return False
        return plain_module(self.conv1d, nn.Conv1d) and self.conv1d.bias is not None

    def _conv_bias(self) -> torch.Tensor:
        """The conv's bias, or zeros for a conv built without one (``bias=False``)."""
        b = self.conv1d.bias
        return b if b is not None else self.conv1d.weight.new_zeros(self.conv1d.weight.shape[0])

    def sequence_inputs(
        self, keys: torch.Tensor, values: torch.Tensor, key_ok: Optional[torch.Tensor] = None
    ):
        """Scan inputs ``u, delta (B, E, L)``, ``A (E, N)``, ``Bsel (B, N, L)`` (>= float32)."""
        u, delta, A, Bsel = self._time_major_inputs(keys, values, key_ok)
        return u.transpose(1, 2), delta.transpose(1, 2), A, Bsel.transpose(1, 2)

    def _time_major_inputs(self, keys, values, key_ok=None, scan: str = "torch"):
        """``u, delta (B, L, E)``, ``A (E, N)``, ``Bsel (B, L, N)`` in the working dtype (``scan="cpu"``:
        the conv and its SiLU by the compiled kernel, one pass each way)."""
        wd = torch.float64 if values.dtype == torch.float64 else torch.float32
        x = self.in_proj(values)
        if key_ok is not None:
            x = x * key_ok.unsqueeze(-1).to(x.dtype)
        # squeeze, not [:, 0]: its gradient is a view, where a select's is a zero-filled copy
        w, b = self.conv1d.weight.squeeze(1), self._conv_bias()
        if scan == "cpu" and x.dtype == wd and w.dtype == wd and b.dtype == wd:
            u = cpu_ops.conv_silu(x, w, b)
        else:
            u = as_dtype(F.silu(causal_depthwise_conv(x, w, b)), wd)  # (B, L, E)
        sel = self.x_proj(keys)
        dt, Bsel = sel.split([self.dt_rank, self.d_state], dim=-1)
        delta = as_dtype(_softplus(self._step(dt)), wd)
        if key_ok is not None:
            keep = key_ok.unsqueeze(-1).to(wd)
            u, delta = u * keep, delta * keep
        A = -torch.exp(as_dtype(self.A_log, wd))
        return u, delta, A, as_dtype(Bsel, wd)

    def _compiled_read(self, queries, keys, values, read):
        """The gated read ``(B, Nq, E)`` by the compiled CPU kernels: the conv and its SiLU (widths
        up to ``cpu_kernel.MAX_CONV``; a pass of their own each way beyond), ``softplus`` of the
        step and the skip term ``D u`` inside the scan (one dtype, no key mask: :meth:`forward`
        checks)."""
        if keys is values and plain_linear(self.in_proj, with_bias=True) and plain_linear(self.x_proj, with_bias=False):
            # one product for both projections of the shared keys / values (and one input gradient)
            w = torch.cat([self.in_proj.weight, self.x_proj.weight])
            bias = torch.cat([self.in_proj.bias, self.in_proj.bias.new_zeros(self.x_proj.out_features)])
            x, dt, Bsel = F.linear(values, w, bias).split([self.d_inner, self.dt_rank, self.d_state], dim=-1)
        else:
            x = self.in_proj(values)
            dt, Bsel = self.x_proj(keys).split([self.dt_rank, self.d_state], dim=-1)
        w, A, C, T = self.conv1d.weight.squeeze(1), -torch.exp(self.A_log), self.c_proj(queries), chunk_size(keys.shape[1])
        if w.shape[-1] <= cpu_kernel.MAX_CONV:  # the conv inside the scan
            y = cpu_ops.conv_scan_read_softplus(x, w, self._conv_bias(), self._step(dt), A, Bsel, C, self.D, read, T)
        else:
            y = cpu_ops.scan_read_softplus(cpu_ops.conv_silu(x, w, self._conv_bias()), self._step(dt), A, Bsel, C,
                                           self.D, read, T)
        return y * F.silu(self.z_proj(queries))

    def _step(self, dt: torch.Tensor) -> torch.Tensor:
        """``dt_proj(dt)``, ``(B, L, R) -> (B, L, E)``.  For a plain ``dt_proj`` one ``addmm`` on
        the rows (``dt`` is a strided slice of a wider projection: ``F.linear`` would add the bias
        in a second pass) by a row-major weight, whose gradient autograd then forms as ``dt^T g``
        (``R x E``) instead of ``g^T dt`` (``E x R``: eight times slower for ``R = 4`` here)."""
        if not plain_linear(self.dt_proj, with_bias=True) or dt.dim() != 3:
            return self.dt_proj(dt)
        B, L, R = dt.shape
        # a row-major (R, E) copy of the weight: autograd then forms its gradient as dt^T g
        w = self.dt_proj.weight.t().contiguous()
        return torch.addmm(self.dt_proj.bias, dt.reshape(B * L, R), w).view(B, L, w.shape[1])

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        key_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``(B, Nq, D), (B, Nk, D), (B, Nk, D) -> (B, Nq, D)``."""
        for name, t in (("queries", queries), ("keys", keys), ("values", values)):
            if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.shape[-1] != self.d_model:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ShapeError(f"mamba: {name} must have shape (B, N, {self.d_model}), got {got}")
        if keys.shape[:2] != values.shape[:2] or keys.shape[0] != queries.shape[0]:
            raise ShapeError(
                f"mamba: incompatible queries {tuple(queries.shape)}, keys "
                f"{tuple(keys.shape)}, values {tuple(values.shape)}"
            )
        from canvas_core.extend import check_dtypes_devices

        check_dtypes_devices("mamba", self, queries=queries, keys=keys, values=values)
        Bt, Nq, _ = queries.shape
        Nk = keys.shape[1]
        # bool (B|1, Nq|1, Nk); the bias of a float mask is not used: a scan has no logits to add it to
        allowed, _ = normalize_key_mask(self.type_name, key_mask, Bt, Nq, Nk, queries)
        if Nk == 0:
            self.kernel_used = "mamba_torch"
            return torch.zeros_like(queries)
        key_ok = None if allowed is None else allowed.any(dim=1)  # (B|1, Nk)
        # aligned reads (Nq == Nk, the usual per-key-set call) read position i: every query reads
        # a key and u at its own position, so no index arithmetic or mask is traced for them
        aligned = Nq == Nk and allowed is None
        if aligned:
            read = torch.arange(Nq, device=queries.device)
            has = None
        elif allowed is None:  # every query reads at least key 0 (Nk >= 1)
            read, has = causal_read_index(Nq, Nk, device=queries.device), None
        else:  # an allowed key at or before the read position (the builtin scans' rule)
            read, has = causal_read(Nq, Nk, allowed, queries.device)
        if key_ok is not None and key_ok.shape[0] != Bt:
            key_ok = key_ok.expand(Bt, Nk)
        kernel = self._choose_kernel(queries, Nq, Nk)
        self.kernel_used = kernel
        fuse = _FUSE_EAGER or (operators_under_compile() and torch.compiler.is_compiling())
        scan = "cpu" if kernel == "mamba_cpu" else "torch"
        if fuse and kernel != "mamba_ssm" and key_ok is None and Bt > 0 and Nq > 0 and self._one_dtype(values):
            # under torch.compile: conv, activations, scan, skip and gate as one operator each way
            # (inner_op.py), so inductor compiles none of their ~100 nodes; eager runs the same
            # operations one by one below (the same values, no custom-operator overhead per call)
            if _FUSE_PROJECTIONS and self._plain_projections():  # the projections inside it too
                return _zero_rows(mamba_projected(self, queries, keys, values, None if aligned else read, scan), has)
            dt, Bsel = self.x_proj(keys).split([self.dt_rank, self.d_state], dim=-1)
            y = mamba_inner(self.in_proj(values), self.conv1d.weight.squeeze(1), self._conv_bias(),
                            self.dt_proj(dt), Bsel, self.c_proj(queries), self.z_proj(queries), self.A_log,
                            self.D, None if aligned else read, scan)
            return self._output(y, has)
        if scan == "cpu" and key_ok is None and self._one_dtype(values):
            return self._output(self._compiled_read(queries, keys, values, read), has)
        u, delta, A, Bsel = self._time_major_inputs(keys, values, key_ok, scan)  # (B, L, E), (B, L, N)
        wd = u.dtype
        C = as_dtype(self.c_proj(queries), wd)  # (B, Nq, N)
        z = self.z_proj(queries)  # (B, Nq, E)
        if kernel == "mamba_ssm":
            y = selective_scan_mamba_ssm(
                u.float().transpose(1, 2).contiguous(),
                delta.float().transpose(1, 2).contiguous(),
                A.float().contiguous(),
                Bsel.float().transpose(1, 2).contiguous(),
                C.float().transpose(1, 2).contiguous(),
                D=self.D.float(),
                z=z.float().transpose(1, 2).contiguous(),
            )
            y = y.transpose(1, 2)  # (B, L=Nq, E), already gated
        else:  # chunked scan, read at each query's position (no per-position states kept)
            y = selective_scan_read(u, delta, A, Bsel, C, read, kernel=scan)  # (B, Nq, E), 0 where read < 0
            if aligned:  # read = arange: u at each query's own position, every read valid
                y = y + as_dtype(self.D, wd) * u
            else:
                ok = (read >= 0).view(1, Nq, 1).to(wd)
                y = y + as_dtype(self.D, wd) * u.index_select(1, read.clamp(min=0)) * ok
            y = y * F.silu(as_dtype(z, wd))
        return self._output(as_dtype(y, queries.dtype), has)

    def _output(self, y: torch.Tensor, has: Optional[torch.Tensor]) -> torch.Tensor:
        """``out_proj`` of the gated read ``y (B, Nq, E)`` (dropout first when active), 0 on the
        queries without a key at or before their read position (``has`` False)."""
        return _zero_rows(self.out_proj(self.drop(y) if self.drop.p > 0 else y), has)

    # ------------------------------------------------------------------ checkpoints
    #: state-dict names whose shape carries the inner width E, and the axis it is on
    _WIDTH_AXIS = {"A_log": 0, "D": 0, "in_proj.weight": 0, "in_proj.bias": 0, "conv1d.weight": 0,
                   "conv1d.bias": 0, "dt_proj.weight": 0, "dt_proj.bias": 0, "z_proj.weight": 0,
                   "z_proj.bias": 0, "out_proj.weight": 1}

    def saved_state_hint(self, name: str, shape) -> Optional[str]:
        """What to build so a saved tensor ``name`` (this module's state-dict key) of ``shape``
        fits, or None: recognises a module saved with another ``expand`` (earlier builds
        defaulted to 2).  ``load_canvas_checkpoint`` adds it to its shape-mismatch message."""
        axis = self._WIDTH_AXIS.get(name)
        if axis is None or len(shape) <= axis:
            return None
        width = int(shape[axis])
        if width == self.d_inner or width <= 0 or width % self.d_model:
            return None
        e = width // self.d_model
        return (f"the saved mamba module has inner width {width} (expand={e} x d_model="
                f"{self.d_model}) and this one expand={self.expand}: build it with expand={e} "
                f"(MambaAttention(..., expand={e}); in a canvas layer, an attention_factory that "
                f"passes expand={e} for 'mamba'); a default mamba module of earlier builds had expand=2")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # torch would list raw size mismatches; say which expand the saved module had instead
        for name in ("A_log", "D"):
            t = state_dict.get(prefix + name)
            hint = self.saved_state_hint(name, tuple(t.shape)) if isinstance(t, torch.Tensor) else None
            if hint:
                raise CheckpointError(f"loading a state dict into mamba module {prefix[:-1] or '<root>'!r}: {hint}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"expand={self.expand}, kernel={self.kernel!r}"
        )


def _zero_rows(out: torch.Tensor, has: Optional[torch.Tensor]) -> torch.Tensor:
    """``out`` with the rows where ``has`` is False set to 0 (``has`` None: every row kept)."""
    return out if has is None else out.masked_fill(~has, 0.0)

