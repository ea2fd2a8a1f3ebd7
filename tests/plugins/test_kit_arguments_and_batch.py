"""The conformance kit's own arguments, its batch-independence property and the build-time probe
across samples (audit: bad kit arguments were blamed on the type; a type mixing samples 0 and 2
passed at batch 3; a key_mask_exact type mixing samples was built; leaks above 48 keys went
unseen)."""

from __future__ import annotations

import pytest

import canvas_core.plugins as P
from canvas_core.errors import CanvasError, CanvasTypeError, SpecError, UnavailableError
from canvas_core.testing import check_attention_type

torch = pytest.importorskip("torch")
nn = torch.nn


class Plain(nn.Module):
    """Per-key-set softmax attention (no key_mask): a correct type."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.q = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)

    def forward(self, queries, keys, values):
        w = torch.softmax(self.q(queries) @ keys.transpose(1, 2) / keys.shape[-1] ** 0.5, -1)
        return self.o(w @ values)


class Exact(Plain):
    """Masked softmax attention that declares key_mask_exact (a correct type)."""

    key_mask_exact = True

    def forward(self, queries, keys, values, key_mask=None):
        B, Nq, Nk = queries.shape[0], queries.shape[1], keys.shape[1]
        allowed = torch.ones(B, Nq, Nk, dtype=torch.bool, device=queries.device)
        if key_mask is not None:
            allowed = allowed & key_mask.expand(B, Nq, Nk)
        has = allowed.any(-1, keepdim=True)
        logits = (self.q(queries) @ keys.transpose(1, 2)).masked_fill(~allowed, float("-inf"))
        w = torch.softmax(logits.masked_fill(~has, 0.0), -1) * allowed
        return self.o(w @ values) * has


class Flip(Plain):
    """Adds the batch-reversed queries: at batch 3 sample 1 maps to itself."""

    def forward(self, queries, keys, values):
        return super().forward(queries, keys, values) + 0.1 * queries.flip(0)


class FlipExact(Exact):
    def forward(self, queries, keys, values, key_mask=None):
        return super().forward(queries, keys, values, key_mask) + 0.1 * queries.flip(0)


class DetachedMix(Plain):
    """Reads sample 0 without a gradient: only the perturbation sees it."""

    def forward(self, queries, keys, values):
        return super().forward(queries, keys, values) + 0.1 * queries[:1].detach()


class GatedMix(Plain):
    """Mixes samples behind a gate that is 0 at initialisation (training opens it)."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__(d_model, n_heads, dropout)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, queries, keys, values):
        return super().forward(queries, keys, values) + self.gate * queries.flip(0)


class BigLeak(Plain):
    """Per key set, but reads every stacked row once a key set has more than 48 keys."""

    def forward(self, queries, keys, values):
        out = super().forward(queries, keys, values)
        return out + values.mean(dim=(0, 1), keepdim=True) if keys.shape[1] > 48 else out


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"grad_inputs": "keys"}, CanvasTypeError, r"grad_inputs must be a tuple.*grad_inputs=\('keys',\)"),
    ({"grad_inputs": ("qeries",)}, CanvasTypeError, "'qeries'.*Did you mean 'queries'"),
    ({"grad_inputs": 5}, CanvasTypeError, "grad_inputs"),
    ({"dtype": "int8"}, SpecError, "not a floating-point dtype"),
    ({"dtype": torch.int64}, SpecError, "not a floating-point dtype"),
    ({"dtype": 5}, CanvasTypeError, "dtype must be"),
    ({"seed": "a"}, CanvasTypeError, "seed must be a non-negative int"),
    ({"seed": -1}, CanvasTypeError, "seed must be a non-negative int"),
    ({"batch": 1}, CanvasTypeError, "batch must be at least 2"),
    ({"n_keys": 5}, CanvasTypeError, "n_keys must be at least 9"),
    ({"strict": "yes"}, CanvasTypeError, "strict must be True or False"),
])
def test_bad_kit_arguments_are_the_callers_error_and_build_nothing(host, kwargs, exc, match):
    built = []

    def factory(d_model, n_heads=4, dropout=0.0):
        built.append(1)
        return Plain(d_model, n_heads, dropout)

    P.register_attention("kit_args_type", factory)
    with pytest.raises(exc, match=match) as ei:
        check_attention_type("kit_args_type", **kwargs)
    assert isinstance(ei.value, CanvasError) and "check_attention_type" in str(ei.value)
    assert "kit_args_type' fails" not in str(ei.value) and not built


def test_a_missing_device_is_refused_before_building(host):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    built = []
    P.register_attention("kit_dev_type", lambda d_model, n_heads=4, dropout=0.0: built.append(1) or Plain(d_model))
    with pytest.raises(UnavailableError, match="device='cuda' cannot be used on this machine.*device='cpu'"):
        check_attention_type("kit_dev_type", device="cuda")
    assert not built


def test_good_types_still_pass_with_the_stricter_checks(host):
    assert check_attention_type(Plain, grad_inputs=["queries", "keys", "values"]).ok
    assert check_attention_type(Exact, batch=2, strict=True).ok
    assert check_attention_type(Exact, n_keys=120, batch=4).ok


@pytest.mark.parametrize("batch", [2, 3, 4])
def test_a_type_mixing_samples_fails_batch_independence_at_any_batch(host, batch):
    report = check_attention_type(Flip, batch=batch, raise_on_failure=False)
    assert "batch independence" in report.failed, report.summary()
    assert "changed sample" in report.failed["batch independence"]


def test_mixing_without_gradient_or_behind_a_closed_gate_is_seen(host):
    report = check_attention_type(DetachedMix, raise_on_failure=False)
    assert "changing sample 0's inputs changed sample 1's output" in report.failed["batch independence"]
    report = check_attention_type(GatedMix, raise_on_failure=False)  # output unchanged: gate is 0
    msg = report.failed["batch independence"]
    assert "by gradient" in msg and "sample 0's output depends on sample 2's queries" in msg


def _layer(fn):
    from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection

    layout = CanvasLayout(T=2, H=2, W=2, d_model=16, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})
    topo = CanvasTopology(connections=[Connection("b", "a", t_src=0, t_dst=0, fn=fn)])
    return CanvasAttention(topo, layout, n_heads=2)


def test_build_refuses_a_key_mask_exact_type_that_mixes_samples(host):
    from canvas_core.errors import AttentionContractError

    P.register_attention("kit_exact_ok", Exact)
    P.register_attention("kit_flip_exact", FlipExact)
    _layer("kit_exact_ok")
    with pytest.raises(AttentionContractError, match=r"#0 'b' -> 'a'.*sample 0's output depends on sample 1"):
        _layer("kit_flip_exact")  # one masked call: the one-sample probe cannot see it


def test_n_keys_probes_a_size_dependent_leak(host):
    # the default gradient probes never take the > 48 keys branch; the value checks' larger call
    # (72 queries x 72 keys) does
    default = check_attention_type(BigLeak, raise_on_failure=False)
    assert "72 queries x 72 keys" in default.failed["dependency exactness"]
    report = check_attention_type(BigLeak, n_keys=120, raise_on_failure=False)
    msg = report.failed["dependency exactness"]
    assert "{0,1}->{0..57}" in msg and "which its key set [0..57] excludes" in msg
