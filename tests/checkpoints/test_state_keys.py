"""SpatiotemporalCanvas state_dict keys (canvas-engineering's layout) are one-to-one: every region
keeps its own modality-embedding entry, for any region names, and the dict loads back exactly."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_core import CanvasLayout, SpatiotemporalCanvas
from canvas_core.runtime.ce_state import region_state_keys, sanitized_region_key

NAMES = st.lists(st.text(alphabet="r012x._[]", min_size=1, max_size=5).filter(lambda s: s.strip()),
                 min_size=1, max_size=6, unique=True)


def _canvas(names, seed=0):
    torch.manual_seed(seed)
    regions = {n: (0, 1, 0, 1, k, k + 1) for k, n in enumerate(names)}
    return SpatiotemporalCanvas(CanvasLayout(T=1, spatial_shape=(1, len(names)), d_model=4, regions=regions))


def test_r1_and_x_give_two_keys():
    sc = _canvas(["r1", "x"])
    sd = sc.state_dict()
    assert torch.equal(sd["modality_embeddings.r1"], sc.modality_embeddings["r0"])
    assert torch.equal(sd["modality_embeddings.x"], sc.modality_embeddings["r1"])


@settings(max_examples=60, deadline=None)
@given(NAMES)
def test_renamed_keys_are_unique_and_round_trip(names):
    keys = region_state_keys(names)
    assert len(set(keys)) == len(names)
    if len({sanitized_region_key(n) for n in names}) == len(names):
        assert keys == [sanitized_region_key(n) for n in names]  # canvas-engineering's own keys
    sc = _canvas(names, seed=0)
    sd = sc.state_dict()
    saved = sorted(k for k in sd if k.startswith("modality_embeddings."))
    assert len(saved) == len(names)
    for k, key in enumerate(keys):  # each region's own value under its key
        assert torch.equal(sd[f"modality_embeddings.{key}"], sc.modality_embeddings[f"r{k}"])
    other = _canvas(names, seed=1)
    other.load_state_dict(sd, strict=True)
    for (n, a), (_, b) in zip(sc.named_parameters(), other.named_parameters()):
        assert torch.equal(a, b), n
    # a canvas-engineering dict (sanitized names) loads too, when its keys are distinct
    if keys == [sanitized_region_key(n) for n in names]:
        ce = {f"modality_embeddings.{sanitized_region_key(n)}": torch.full((4,), float(k)) for k, n in enumerate(names)}
        fresh = _canvas(names, seed=2)
        fresh.load_state_dict({**sd, **ce}, strict=True)
        for k in range(len(names)):
            assert torch.equal(fresh.modality_embeddings[f"r{k}"], torch.full((4,), float(k)))


def test_state_dict_of_a_larger_canvas_is_refused_before_loading():
    import pytest

    from canvas_core.errors import CheckpointError

    def canvas(T, seed):
        torch.manual_seed(seed)
        return SpatiotemporalCanvas(CanvasLayout(T=T, spatial_shape=(2, 2), d_model=4,
                                                 regions={"a": (0, T, 0, 1, 0, 2), "b": (0, T, 1, 2, 0, 2)}))

    small, big = canvas(4, 0), canvas(16, 1)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    for strict in (True, False):
        with pytest.raises(CheckpointError, match=r"size mismatch for pos_enc.pe.*\(16, 2, 2, 4\).*\(4, 2, 2, 4\)") as e:
            small.load_state_dict(big.state_dict(), strict=strict)
        assert isinstance(e.value, RuntimeError)  # as torch's own size mismatch
    assert all(torch.equal(v, small.state_dict()[k]) for k, v in before.items())
    small.load_state_dict(canvas(4, 2).state_dict())  # same size loads
