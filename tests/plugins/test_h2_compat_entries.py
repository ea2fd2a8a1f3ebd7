"""What canvas-engineering code sees of ``ATTENTION_REGISTRY`` values and of
``canvas_core.cogvideox.detect_inner_dim``.

Regressions (each test fails on the code before its fix):

* an ``AttentionEntry`` reported ``__module__ == "canvas_core.plugins"`` and the docstring of
  ``AttentionEntry`` itself, so ``f"{cls.__module__}.{cls.__qualname__}"`` named no real object
  and ``help()`` / ``cls.__doc__`` described the wrapper, not the attention type;
* ``detect_inner_dim`` on something that is not a CogVideoX transformer (a block, its attention,
  any module) raised a bare ``AttributeError: ... has no attribute 'config'``.
"""

from __future__ import annotations

import importlib
import pickle

import pytest

import canvas_core.plugins as P
from canvas_core.errors import BackboneError, CanvasError
from canvas_core.plugins import AttentionEntry


class ThreeArgs:
    """A canvas-engineering style attention class, registered by assignment."""

    def __init__(self, d_model, n_heads, dropout):
        self.d_model = d_model


def test_an_entry_reports_the_module_and_doc_of_its_factory(host):
    entry = P.ATTENTION_REGISTRY["cross_attention"]
    assert entry.__module__ == "canvas_core.attention"  # read off the lazy path, nothing imported
    assert getattr(importlib.import_module(entry.__module__), entry.__qualname__) is entry.load()
    assert entry.__doc__ == entry.load().__doc__ and "AttentionEntry" not in (entry.__doc__ or "")

    P.ATTENTION_REGISTRY["h2_three"] = ThreeArgs
    mine = P.ATTENTION_REGISTRY["h2_three"]
    assert (mine.__module__, mine.__name__, mine.__doc__) == (__name__, "ThreeArgs", ThreeArgs.__doc__)

    P.register_attention("h2_broken", "h2_no_such_module.sub:Thing", description="never importable")
    broken = P.ATTENTION_REGISTRY["h2_broken"]
    assert broken.__module__ == "h2_no_such_module.sub" and broken.__doc__ == "never importable"

    # the class itself is untouched: it still pickles and documents itself
    assert AttentionEntry.__module__ == "canvas_core.plugins" and "ATTENTION_REGISTRY" in AttentionEntry.__doc__
    assert pickle.loads(pickle.dumps(entry)).name == "cross_attention"


def _tiny_transformer():
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=16, num_layers=1, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        max_text_seq_length=6).eval()


def test_detect_inner_dim_of_something_else_names_it_and_what_is_expected():
    pytest.importorskip("canvas_plugin_cogvideox")
    torch = pytest.importorskip("torch")
    from canvas_core.cogvideox import CogVideoXAdapter, detect_inner_dim

    model = _tiny_transformer()
    assert detect_inner_dim(model) == 16
    block = model.transformer_blocks[0]
    cases = [(torch.nn.Linear(4, 4), "torch.nn.modules.linear.Linear"), (block, "CogVideoXBlock"),
             (block.attn1, "Attention"), (None, "NoneType")]
    for obj, named in cases:
        with pytest.raises(BackboneError) as err:
            detect_inner_dim(obj)
        msg = str(err.value)
        assert named in msg and "CogVideoXTransformer3DModel" in msg and "num_attention_heads" in msg
    assert "pass the transformer holding it" in str(pytest.raises(BackboneError, detect_inner_dim, block).value)

    class Config:
        num_attention_heads, attention_head_dim = None, 64

    class Odd:
        config = Config()

    with pytest.raises(CanvasError, match="num_attention_heads=None"):
        CogVideoXAdapter().hidden_size(Odd())
    with pytest.raises(BackboneError, match="CogVideoXTransformer3DModel"):
        CogVideoXAdapter().latent_channels(torch.nn.Linear(2, 2))
