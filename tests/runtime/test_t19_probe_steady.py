"""t19: the build probe refuses a type whose identical calls differ by a call counter, one keeping state
between calls only in training mode, and a ``key_mask_exact`` type that reads outside its key sets
only in a call of one sample or only when a call holds many samples; legitimate dropout (torch's or
its own) still builds."""

from __future__ import annotations

import warnings

import pytest
import torch

from canvas_core import CanvasLayout, CanvasTopology, Connection
from canvas_core.dispatch import AttentionDispatcher
from canvas_core.errors import AttentionContractError
from canvas_core.plugins import register_attention
from canvas_core.testing import isolated_plugins
from tests._hostile_types import (CallCounter, CountsInTraining, DropoutSoftmax, ExactLeaksAtBatch1, ExactLeaksAtBatch1Large,
                                  ExactMixesManySamples, ExactSoftmax, KeepsStateTraining, OwnRandomDropout, PlainSoftmax,
                                  UrandomNoise)

torch.set_num_threads(1)

# 4 frames: the link b -> a (same frame) is one masked call of 12 queries x 12 keys for an exact type
LAYOUT = CanvasLayout(T=4, H=2, W=3, d_model=16, regions={"a": (0, 4, 0, 1, 0, 3), "b": (0, 4, 1, 2, 0, 3)})
WHERE = "connection #0 'b' -> 'a' (fn 't19')"


def _build(cls, dropout=0.0):
    with isolated_plugins():
        register_attention("t19", cls)
        top = CanvasTopology(connections=[Connection("b", "a", t_src=0, t_dst=0, fn="t19")])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AttentionDispatcher(top, LAYOUT, d_model=16, n_heads=2, dropout=dropout)


def _refusal(cls, dropout=0.0):
    with pytest.raises(AttentionContractError) as err:
        _build(cls, dropout)
    msg = str(err.value)
    assert msg.startswith(WHERE), msg
    return msg


def test_a_type_whose_identical_calls_differ_by_a_call_counter_is_refused_at_build_with_the_fix():
    msg = _refusal(CallCounter)
    assert "two identical calls give different outputs (by 0.01," in msg, msg
    assert "depends on how often it was called" in msg and "keep no call counter" in msg, msg


class _SpectralNorm(PlainSoftmax):
    """Values through a spectral-normalised projection: its power iteration moves in training mode."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__(d_model, n_heads, dropout)
        self.proj = torch.nn.utils.spectral_norm(torch.nn.Linear(d_model, d_model))

    def forward(self, q, k, v):
        return self.attend(q, k, self.proj(v))


class _OwnGeneratorDropout(PlainSoftmax):
    """Dropout drawn from a generator the module owns (advances every call in training mode)."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__(d_model, n_heads, dropout)
        self.gen = torch.Generator().manual_seed(5)

    def forward(self, q, k, v):
        o = self.attend(q, k, v)
        if not self.training:
            return o
        keep = torch.rand(o.shape, generator=self.gen) > 0.3
        return o * keep / 0.7


class _WeightAverage(PlainSoftmax):
    """Keeps a running average of its own weights in training mode (mean-teacher style) and reads it."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__(d_model, n_heads, dropout)
        self.lin = torch.nn.Linear(d_model, d_model)
        self.register_buffer("avg", torch.zeros(d_model, d_model))

    def forward(self, q, k, v):
        if self.training:
            with torch.no_grad():
                self.avg.mul_(0.5).add_(0.5 * self.lin.weight + 0.1)
        return self.attend(q, k, v @ self.avg.t() + self.lin(v))


@pytest.mark.parametrize("cls", [CountsInTraining, _SpectralNorm, _OwnGeneratorDropout, _WeightAverage])
def test_state_that_evolves_on_its_own_in_training_mode_builds(cls):
    """In training mode only a state kept from a call's inputs is refused: a counter, a power
    iteration, a private generator or an average of the weights carries no key to another call."""
    layer = _build(cls, dropout=0.0)
    assert layer.training
    assert layer(torch.randn(2, 24, 16)).shape == (2, 24, 16)


def test_noise_from_outside_torchs_generators_is_not_blamed_at_build():
    assert _build(UrandomNoise) is not None  # the kit's 'deterministic' fails it; nothing ties it to a key


def test_a_type_keeping_state_only_in_training_mode_is_refused_with_dropout_too():
    for dropout in (0.0, 0.3):  # dropout draws alike in every call of the probe: only the state shows
        msg = _refusal(KeepsStateTraining, dropout)
        assert "keeps state between calls" in msg and "(in training mode)" in msg, msg
        assert "depends on the inputs of the call before" in msg, msg
        # a state, not a read outside the key sets: no advice about key sets or masks
        assert "linked keys" not in msg and "key_mask" not in msg and "numbered in the probe" not in msg, msg


class _LayerDrop(PlainSoftmax):
    """Skips its branch with Python's ``random`` half the time in training mode (LayerDrop)."""

    def forward(self, q, k, v):
        import random

        o = self.attend(q, k, v)
        return o * 0 if self.training and random.random() < 0.5 else o


def test_a_branch_skipped_at_random_by_pythons_random_builds_every_time():
    """The probe seeds Python's random like torch's before every call, and restores it after."""
    import random

    for seed in range(12):
        random.seed(seed)
        state = random.getstate()
        assert _build(_LayerDrop, dropout=0.0) is not None
        assert random.getstate() == state


def test_dropout_from_torch_or_from_its_own_generator_still_builds_in_training_mode():
    for cls in (DropoutSoftmax, OwnRandomDropout):
        layer = _build(cls, dropout=0.5)
        assert layer.training
        assert layer(torch.randn(2, 24, 16)).shape == (2, 24, 16)


def test_an_exact_type_leaking_only_in_a_call_of_one_sample_is_refused():
    msg = _refusal(ExactLeaksAtBatch1)
    assert "declares key_mask_exact = True" in msg and "(a call of one sample)" in msg, msg


def test_an_exact_type_leaking_at_batch_1_only_at_the_real_size_is_refused_there():
    msg = _refusal(ExactLeaksAtBatch1Large)  # 6 keys in the small call: only the real shape (12 keys) shows it
    assert "(a call of one sample), at a shape the runtime calls it with (its masked call" in msg, msg


def test_an_exact_type_mixing_samples_only_in_a_large_batch_is_refused():
    msg = _refusal(ExactMixesManySamples)
    assert "(16 samples in one call)" in msg, msg


def test_an_honest_exact_type_builds_and_runs_at_batch_1():
    layer = _build(ExactSoftmax)
    assert layer(torch.randn(1, 24, 16)).shape == (1, 24, 16)
