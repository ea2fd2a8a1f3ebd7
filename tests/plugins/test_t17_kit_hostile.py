"""Hostile attention types that the conformance kit and the build-time probe let through.

Regressions (a report-only review's plugin types, written inline here):

* a read with no gradient path passed ``check_attention_type(strict=True)`` and the layer build:
  ``o + 0.5 * o.detach()`` with the stacked key-set rows swapped in pairs, ``o / rms(o.detach())``
  over the whole call (dependency exactness and the probe measured reads by gradient only);
* ``values.data.mul_(2)`` in forward (no version counter moves) passed both, with wrong gradients;
* a type raising in the build's first small probe gave a bare traceback without the connection,
  and one allocating absurd memory a bare allocator ``RuntimeError``;
* the kit named a registered type by its class and module ('F64Out' from hostile.types), blamed a
  non-deterministic type for a batch leak, turned a NaN gradient into "depends on query 1", and
  let a type change the default dtype or reseed the global RNG without a word.
"""

from __future__ import annotations

import os
import warnings

import pytest

import canvas_core.plugins as P
from canvas_core import CanvasLayout, CanvasTopology, Connection
from canvas_core.dispatch import AttentionDispatcher
from canvas_core.errors import AttentionContractError
from canvas_core.plugins import PluginHost, get_attention_spec, use_host
from canvas_core.testing import check_attention_type

torch = pytest.importorskip("torch")
nn = torch.nn
torch.set_num_threads(1)

LAYOUT = CanvasLayout(T=2, H=4, W=4, d_model=16, regions={"a": (0, 2, 0, 2, 0, 4), "b": (0, 2, 2, 4, 0, 4)})


@pytest.fixture(autouse=True)
def _host():
    with use_host(PluginHost(entry_points=lambda: [])) as h:
        yield h


class Reads(nn.Module):
    """A correct per-key-set type: softmax attention over the keys it is given, then a projection."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.lin = nn.Linear(d_model, d_model)

    def read(self, q, k, v):
        if k.shape[1] == 0:
            return self.lin(q) * 0
        return self.lin(torch.softmax(q @ k.transpose(1, 2) / k.shape[-1] ** 0.5, -1) @ v)

    def forward(self, q, k, v):
        return self.read(q, k, v)


class PairSwap(Reads):
    """Adds the detached output of the neighbouring row of the stacked batch (rows mixed in pairs)."""

    def forward(self, q, k, v):
        o = self.read(q, k, v)
        if o.shape[0] % 2 == 0:
            o = o + 0.5 * o.detach().reshape(-1, 2, *o.shape[1:]).flip(1).reshape(o.shape)
        return o


class DetachedNorm(Reads):
    """Divides by the RMS of the whole call's output, detached: every row reads every row."""

    def forward(self, q, k, v):
        o = self.read(q, k, v)
        return o / o.detach().pow(2).mean().sqrt()


class DataWrite(Reads):
    def forward(self, q, k, v):
        o = self.read(q, k, v)
        v.data.mul_(2.0)  # no version counter moves
        return o


class Float64Out(Reads):
    def forward(self, q, k, v):
        return self.read(q, k, v).double()


class Counting(Reads):
    """Output scaled by how often it was called."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls = 0

    def forward(self, q, k, v):
        self.calls += 1
        return self.read(q, k, v) * (1.0 + 0.1 * self.calls)


class Noisy(Reads):
    def forward(self, q, k, v):
        g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
        return self.read(q, k, v) + 1e-3 * torch.randn(q.shape, generator=g).to(q.dtype)


class NanGradient(Reads):
    """A finite output whose gradient is NaN (sqrt at 0)."""

    def forward(self, q, k, v):
        o = self.read(q, k, v)
        return o + 0 * torch.sqrt(torch.zeros_like(o) - 0.0 * o)


class SetsDefaultDtype(Reads):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        torch.set_default_dtype(torch.float64)


class Reseeds(Reads):
    def forward(self, q, k, v):
        torch.manual_seed(1234)
        return self.read(q, k, v)


class Raises(Reads):
    def forward(self, q, k, v):
        raise ValueError("the plugin's own bug")


class HugeAlloc(Reads):
    def forward(self, q, k, v):
        torch.empty(1 << 62, dtype=torch.uint8)
        return self.read(q, k, v)


def _kit(name, cls, **kw):
    P.register_attention(name, cls)
    return check_attention_type(name, d_model=16, raise_on_failure=False, strict=True, **kw)


def _build(name, cls):
    P.register_attention(name, cls)
    topology = CanvasTopology(connections=[Connection(src="a", dst="a"), Connection(src="a", dst="b", fn=name),
                                           Connection(src="b", dst="b")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AttentionDispatcher(topology, LAYOUT, d_model=16, n_heads=4)


# ---------------------------------------------------------------------- 1. reads without a gradient path
@pytest.mark.parametrize("cls", [PairSwap, DetachedNorm])
def test_the_kit_catches_a_detached_read_across_key_sets(cls):
    report = _kit("detached_t", cls)
    why = report.failed["dependency exactness"]
    assert "by value" in why and "query 2's output" in why, why
    assert "when only the inputs of queries 0, 1 and keys 0..2 changed" in why
    assert "no gradient connects them" in why


def test_the_kit_catches_a_detached_read_across_samples():
    assert "changing sample 0's inputs changed sample 1's output" in _kit("norm_t", DetachedNorm).failed[
        "batch independence"]


@pytest.mark.parametrize("cls", [PairSwap, DetachedNorm])
def test_the_build_refuses_a_detached_read_naming_the_connection(cls):
    with pytest.raises(AttentionContractError) as info:
        _build("detached_t", cls)
    text = str(info.value)
    assert "'a' -> 'b'" in text and "'detached_t'" in text and "reads outside the linked keys" in text
    assert "changed" in text and "sample 0's queries 0, 1 and keys 0..2" in text


def test_correct_and_merely_noisy_types_still_build():
    assert _build("reads_t", Reads) is not None
    assert _build("noisy_t", Noisy) is not None  # varies between calls: nothing to blame on another row


# ---------------------------------------------------------------------- 2. writes through .data
def test_the_kit_refuses_a_write_through_data_naming_the_input():
    report = _kit("data_write_t", DataWrite)
    assert {"gradients", "dependency exactness", "trainable"} <= set(report.failed)
    for why in report.failed.values():
        assert "modifies its input 'values' in place" in why and ".data" in why, why


def test_the_build_refuses_a_write_through_data():
    with pytest.raises(AttentionContractError, match=r"'a' -> 'b'.*'data_write_t'.*modifies its input 'values'"):
        _build("data_write_t", DataWrite)


# ---------------------------------------------------------------------- 3. / 4. the type's own exceptions
def test_an_exception_of_the_first_small_probe_names_the_connection_and_provider():
    with pytest.raises(AttentionContractError) as info:
        _build("raises_t", Raises)
    text = str(info.value)
    provider = get_attention_spec("raises_t").describe_provider()
    assert "'a' -> 'b'" in text and "'raises_t' (Raises)" in text and provider in text
    assert "raised ValueError" in text and "the plugin's own bug" in text
    assert isinstance(info.value.__cause__, ValueError)


def test_an_absurd_allocation_is_said_as_the_types_own():
    with pytest.raises(AttentionContractError) as info:
        _build("huge_t", HugeAlloc)
    text = str(info.value)
    assert "'a' -> 'b'" in text and "'huge_t' (HugeAlloc)" in text
    assert f"tried to allocate {1 << 62} bytes" in text and "probe inputs of shape queries (2, 4, 16)" in text
    assert isinstance(info.value.__cause__, RuntimeError)


# ---------------------------------------------------------------------- 5. the kit's messages
def test_the_kit_names_a_registered_type_as_the_build_does():
    why = _kit("f64_t", Float64Out).failed["shape/dtype/device"]
    assert f"attention type 'f64_t' from {get_attention_spec('f64_t').describe_provider()}" in why, why
    assert "'Float64Out' from" not in why


@pytest.mark.parametrize("cls", [Counting, Noisy])
def test_a_non_deterministic_type_is_not_blamed_for_a_leak(cls):
    report = _kit("unsteady_t", cls)
    assert list(report.failed) == ["deterministic"], report.summary()
    assert "two identical calls" in report.failed["deterministic"]
    for prop in ("batch independence", "dependency exactness"):
        assert "not deterministic" in report.skipped[prop], report.summary()


def test_a_nan_gradient_is_reported_as_such():
    report = _kit("nan_grad_t", NanGradient)
    for prop in ("batch independence", "dependency exactness"):
        why = report.failed[prop]
        assert "NaN or infinite gradient" in why and "depends on query" not in why, why


def test_a_constructor_changing_the_default_dtype_fails_and_is_undone():
    report = _kit("dtype_t", SetsDefaultDtype)
    assert torch.get_default_dtype() == torch.float32
    assert list(report.failed) == ["process state"], report.summary()
    assert "changes the process's default dtype from torch.float32 to torch.float64" in report.failed["process state"]


def test_a_forward_reseeding_the_global_rng_fails_and_the_callers_rng_is_kept():
    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    report = _kit("reseeds_t", Reseeds)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert list(report.failed) == ["process state"], report.summary()
    assert "reseeds the global RNG" in report.failed["process state"]


def test_a_correct_type_passes_every_property():
    report = _kit("reads_t", Reads)
    assert report.ok and not report.skipped, report.summary()
    assert "process state" in report.passed


# ---------------------------------------------------------------------- the kernel probe alike
def _kernel_layer(kernel):
    from canvas_core import CanvasAttention

    topology = CanvasTopology(connections=[Connection(src="a", dst="a"), Connection(src="b", dst="b")])
    return CanvasAttention(topology, LAYOUT, d_model=16, n_heads=2, kernel=kernel)


def test_the_kernel_probe_refuses_a_write_through_data_and_an_absurd_allocation():
    from canvas_core.extend import AttentionKernel

    class ScalesQueries(AttentionKernel):
        def forward(self, q, k, v, *, scale=None, dropout_p=0.0):
            q.data.mul_(2.0)
            return torch.softmax(q @ k.transpose(-1, -2) * scale, -1) @ v

    class Allocates(AttentionKernel):
        def forward(self, q, k, v, *, scale=None, dropout_p=0.0):
            torch.empty(1 << 62, dtype=torch.uint8)
            return v

    with pytest.raises(AttentionContractError, match=r"ScalesQueries.*writes into its input q "):
        _kernel_layer(ScalesQueries)
    with pytest.raises(AttentionContractError, match=rf"Allocates.*tried to allocate {1 << 62} bytes"):
        _kernel_layer(Allocates)
