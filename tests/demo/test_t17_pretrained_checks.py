"""`--pretrained` loading refuses weights that do not fill the model exactly: a tensor missing from
the file, a tensor the model has no place for, a config.json of another depth, NaN or infinite
values; a good directory still loads bit for bit.  Checkpoints are tiny and written here."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from canvas_core.errors import BackboneError

diffusers = pytest.importorskip("diffusers")
timm = pytest.importorskip("timm")
from safetensors.torch import load_file, save_file  # noqa: E402

WEIGHTS = "diffusion_pytorch_model.safetensors"
KEY = "transformer_blocks.1.attn1.to_q.weight"
VIT_KEY = "blocks.1.attn.qkv.weight"


def _recipe(name):
    from canvas_core.demo.backbones import BACKBONES

    return BACKBONES[name]


def _edit(folder, file, change):
    """Rewrite the safetensors ``folder/file`` with ``change(state_dict)`` applied."""
    sd = load_file(str(folder / file))
    change(sd)
    save_file(sd, str(folder / file), metadata={"format": "pt"})


def _assert_same(model, reference):
    got, want = model.state_dict(), reference.state_dict()
    assert list(got) == list(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype and torch.equal(got[name], value), name


@pytest.fixture(scope="module")
def cog_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cog")
    model = _recipe("cogvideox").build(0)
    model.save_pretrained(str(root / "good"))
    return root, model


def _copy(root, name):
    dst = root.parent / f"{root.name}-{name}"
    shutil.copytree(root / "good", dst)
    return dst


DEFECTS = {
    "missing": (lambda sd: sd.pop(KEY), ["1 tensor of the CogVideoXTransformer3DModel is not in the weights", KEY]),
    "extra": (lambda sd: sd.__setitem__("bogus.weight", torch.zeros(3)),
              ["1 tensor of the weights has no place in the model", "bogus.weight"]),
    "nan": (lambda sd: sd[KEY].view(-1)[5:7].fill_(float("nan")), ["holds NaN or infinite values", KEY]),
    "inf": (lambda sd: sd[KEY].view(-1)[0].fill_(float("-inf")), ["holds NaN or infinite values", KEY]),
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_cogvideox_weights_with_a_defect_are_refused(cog_dir, defect):
    root, _ = cog_dir
    folder = _copy(root, defect)
    change, words = DEFECTS[defect]
    _edit(folder, WEIGHTS, change)
    with pytest.raises(BackboneError) as err:
        _recipe("cogvideox").load(folder)
    msg = str(err.value)
    assert str(folder / WEIGHTS) in msg
    for word in words:
        assert word in msg


@pytest.mark.parametrize("layers, words", [
    (3, ["24 tensors of the CogVideoXTransformer3DModel are not in the weights", "transformer_blocks.2.", "and 21 more"]),
    (1, ["24 tensors of the weights have no place in the model", "transformer_blocks.1.", "and 21 more"]),
])
def test_cogvideox_config_of_another_depth_is_refused(cog_dir, layers, words):
    root, _ = cog_dir
    folder = _copy(root, f"layers{layers}")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_layers"] = layers
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BackboneError, match="num_layers") as err:
        _recipe("cogvideox").load(folder)
    for word in words:
        assert word in str(err.value)


def test_cogvideox_good_directory_loads_exactly_sharded_too(cog_dir):
    root, model = cog_dir
    _assert_same(_recipe("cogvideox").load(root / "good"), model)
    model.save_pretrained(str(root / "sharded"), max_shard_size="20KB")
    shards = sorted(root.joinpath("sharded").glob("*.safetensors"))
    assert len(shards) > 2
    _assert_same(_recipe("cogvideox").load(root / "sharded"), model)
    # a key missing from one shard is refused, naming the shards
    holder = next(s for s in shards if KEY in load_file(str(s)))
    _edit(root / "sharded", holder.name, lambda sd: sd.pop(KEY))
    with pytest.raises(BackboneError, match=f"the {len(shards)} shards in .*{KEY}"):
        _recipe("cogvideox").load(root / "sharded")


def test_mochi_missing_tensor_is_refused_and_good_loads_exactly(tmp_path):
    model = _recipe("mochi").build(0)
    model.save_pretrained(str(tmp_path / "good"))
    _assert_same(_recipe("mochi").load(tmp_path / "good"), model)
    shutil.copytree(tmp_path / "good", tmp_path / "bad")
    key = "pos_frequencies"
    _edit(tmp_path / "bad", WEIGHTS, lambda sd: sd.pop(key))
    with pytest.raises(BackboneError, match=f"1 tensor of the MochiTransformer3DModel is not in the weights.*{key}"):
        _recipe("mochi").load(tmp_path / "bad")


def test_demo_refuses_a_half_matching_directory_before_training(cog_dir, tmp_path):
    from canvas_core.demo.pipeline import DemoConfig, run_demo

    root, _ = cog_dir
    folder = _copy(root, "demo")
    _edit(folder, WEIGHTS, lambda sd: sd.pop(KEY))
    with pytest.raises(BackboneError, match=KEY):
        run_demo(DemoConfig(steps=2, batch_size=2, eval_samples=4, out=tmp_path / "out", progress=False,
                            pretrained=folder), log=lambda _: None)
    assert not any((tmp_path / "out").glob("*"))  # nothing trained, nothing written


# ------------------------------------------------------------------ timm ViT
def _vit(num_classes=0):
    torch.manual_seed(1)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             embed_dim=32, num_heads=2, num_classes=num_classes, in_chans=4)


VIT_DEFECTS = {
    "missing": (lambda sd: sd.pop(VIT_KEY), ["1 tensor of the VisionTransformer is not in the weights", VIT_KEY]),
    "extra": (lambda sd: sd.__setitem__("bogus", torch.zeros(2)), ["has no place in the model", "'bogus'"]),
    "nan": (lambda sd: sd[VIT_KEY].view(-1)[3].fill_(float("nan")), ["holds NaN or infinite values", VIT_KEY]),
}


@pytest.mark.parametrize("defect", sorted(VIT_DEFECTS))
def test_bare_vit_weights_with_a_defect_are_refused(tmp_path, defect):
    (tmp_path / "vit").mkdir()
    sd = _vit().state_dict()
    change, words = VIT_DEFECTS[defect]
    change(sd)
    save_file(sd, str(tmp_path / "vit" / "model.safetensors"))
    with pytest.raises(BackboneError) as err:
        _recipe("vit").load(tmp_path / "vit")
    for word in [str(tmp_path / "vit" / "model.safetensors"), *words]:
        assert word in str(err.value)


def test_vit_directory_with_config_refuses_nan_and_pickles(tmp_path):
    from timm.models import save_for_hf

    save_for_hf(_vit(), str(tmp_path / "hf"), safe_serialization=True)
    _edit(tmp_path / "hf", "model.safetensors", lambda sd: sd[VIT_KEY].view(-1)[0].fill_(float("inf")))
    with pytest.raises(BackboneError, match=f"holds NaN or infinite values.*{VIT_KEY}"):
        _recipe("vit").load(tmp_path / "hf")
    save_for_hf(_vit(), str(tmp_path / "bin"), safe_serialization=False)
    with pytest.raises(BackboneError, match="no model.safetensors"):
        _recipe("vit").load(tmp_path / "bin")


@pytest.mark.parametrize("num_classes", [0, 10])
def test_bare_vit_loads_exactly_and_a_saved_classifier_is_expected(tmp_path, num_classes):
    """The demo's ViT has no classifier (num_classes=0); a file saved with one may carry its head."""
    saved = _vit(num_classes)
    (tmp_path / "vit").mkdir()
    save_file(saved.state_dict(), str(tmp_path / "vit" / "model.safetensors"))
    loaded = _recipe("vit").load(tmp_path / "vit")
    want = {k: v for k, v in saved.state_dict().items() if not k.startswith("head.")}
    got = loaded.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], v) for k, v in want.items())


def test_vit_directory_with_config_loads_exactly(tmp_path):
    from timm.models import save_for_hf

    saved = _vit(5)
    save_for_hf(saved, str(tmp_path / "hf"), safe_serialization=True)
    _assert_same(_recipe("vit").load(tmp_path / "hf"), saved)
