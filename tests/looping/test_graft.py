"""graft_looped_blocks on plain models (generic adapter), freeze strategies, adapter lookup."""

import pytest
import torch
from torch import nn

import canvas_core
from canvas_core.errors import BackboneError, CanvasError
from canvas_core.looping import (
    BackboneAdapter,
    GenericAdapter,
    LoopedBlockWrapper,
    find_adapter,
    freeze_full,
    freeze_half,
    get_adapter,
    graft_looped_blocks,
)


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return x + self.fc(self.ln(x))


class Net(nn.Module):
    def __init__(self, d=12, depth=4, attr="transformer_blocks"):
        super().__init__()
        self.embed_dim = d
        self.patch_embed = nn.Linear(3, d)
        setattr(self, attr, nn.ModuleList([Block(d) for _ in range(depth)]))
        self._attr = attr
        self.proj_out = nn.Linear(d, 3)

    def forward(self, x):
        x = self.patch_embed(x)
        for b in getattr(self, self._attr):
            x = b(x)
        return self.proj_out(x)


def n_trainable(m):
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


@pytest.mark.parametrize("loops", [1, 2, 3])
def test_generic_graft_identity_and_counts(loops):
    torch.manual_seed(0)
    m = Net()
    x = torch.randn(2, 7, 3)
    ref = m(x)
    blocks, head = graft_looped_blocks(
        m, max_loops=loops, freeze="full", action_dim=5, latent_channels=3
    )
    assert isinstance(get_adapter(m), GenericAdapter)
    assert all(isinstance(b, LoopedBlockWrapper) for b in blocks) and len(blocks) == 4
    assert torch.equal(m(x), ref)
    # documented formula: depth * (max_loops * D + (max_loops - 1))
    assert n_trainable(m) == 4 * (loops * 12 + loops - 1)
    assert head(torch.randn(2, 3)).shape == (2, 5)


def test_freeze_strategies():
    torch.manual_seed(0)
    m = Net()
    total = sum(p.numel() for p in m.parameters())
    loop_n = 4 * (3 * 12 + 2)
    graft_looped_blocks(m, max_loops=3, freeze="none")
    assert n_trainable(m) == total + loop_n
    pe = sum(p.numel() for p in m.patch_embed.parameters())
    assert freeze_half(m) == pe
    assert n_trainable(m) == total + loop_n - pe
    assert not any(p.requires_grad for p in m.patch_embed.parameters())
    assert freeze_full(m) == total and n_trainable(m) == loop_n


def test_full_freeze_gradients_reach_only_loop_params():
    torch.manual_seed(0)
    m = Net()
    blocks, head = graft_looped_blocks(m, max_loops=2, freeze="full", latent_channels=3)
    m.train()
    out = m(torch.randn(2, 5, 3))
    (out.pow(2).mean() + head(out.mean(1)).pow(2).mean()).backward()
    got = {n for n, p in m.named_parameters() if p.grad is not None}
    assert got == {
        f"transformer_blocks.{i}.{k}" for i in range(4) for k in ("loop_emb", "loop_gate")
    }
    assert all(p.grad is not None for p in head.parameters())


def test_blocks_attribute_and_block_attr():
    m = Net(attr="blocks")
    blocks, _ = graft_looped_blocks(m, max_loops=2, latent_channels=3)
    assert len(blocks) == 4 and m.blocks[0] is blocks[0]
    m2 = Net(attr="layers_custom")
    with pytest.raises(BackboneError, match="adapter"):
        graft_looped_blocks(m2)
    blocks, _ = graft_looped_blocks(m2, block_attr="layers_custom", inner_dim=12, latent_channels=3)
    assert len(blocks) == 4


def test_errors_name_the_problem():
    with pytest.raises(BackboneError) as e:
        graft_looped_blocks(nn.Linear(3, 3))
    msg = str(e.value)
    assert "Linear" in msg and "installed adapters" in msg and "adapter=" in msg
    m = Net()
    with pytest.raises(BackboneError, match="freeze"):
        graft_looped_blocks(m, freeze="partial")
    with pytest.raises(BackboneError, match="max_loops"):
        graft_looped_blocks(m, max_loops=0)
    with pytest.raises(CanvasError):
        graft_looped_blocks("model")
    graft_looped_blocks(m, latent_channels=3)
    with pytest.raises(BackboneError, match="already grafted"):
        graft_looped_blocks(m)
    with pytest.raises(BackboneError, match="unknown backbone adapter"):
        graft_looped_blocks(Net(), adapter="no-such-adapter")


def test_explicit_adapter_instance_and_class():
    class MyAdapter(BackboneAdapter):
        name = "mine"
        block_attr = "transformer_blocks"

        def hidden_size(self, model):
            return model.embed_dim

        def latent_channels(self, model):
            return 3

    m = Net()
    x = torch.randn(1, 2, 3)
    ref = m(x)
    blocks, head = graft_looped_blocks(m, adapter=MyAdapter, max_loops=2)
    assert isinstance(get_adapter(m), MyAdapter) and torch.equal(m(x), ref)
    assert head.latent_channels == 3 if hasattr(head, "latent_channels") else True
    graft_looped_blocks(Net(), adapter=MyAdapter(), max_loops=2)


def test_registry_lists_installed_plugin_adapters():
    from canvas_core.looping.registry import backbone_entries

    names = {e.name for e in backbone_entries()}
    assert {"cogvideox", "mochi", "vit"} <= names
    assert isinstance(find_adapter(Net()), GenericAdapter)


def test_public_names_from_canvas_core():
    for n in (
        "LoopedBlockWrapper",
        "graft_looped_blocks",
        "freeze_full",
        "freeze_half",
        "CurriculumScheduler",
        "SharpeningSchedule",
        "save_loop_checkpoint",
        "load_loop_checkpoint",
    ):
        assert getattr(canvas_core, n) is getattr(
            __import__("canvas_core.looping", fromlist=[n]), n
        )


def test_freeze_half_needs_an_input_embedding():
    class NoEmbed(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block(4)])

    m = NoEmbed()
    with pytest.raises(BackboneError, match="patch_embed"):
        graft_looped_blocks(m, freeze="half", inner_dim=4, latent_channels=4)
    assert isinstance(m.blocks[0], Block)  # refused before anything changed


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(latent_channels="4"), "latent_channels must be an int"),
        (dict(latent_channels=0), "latent_channels must be an int"),
        (dict(action_hidden_dim=-1), "action_hidden_dim must be an int"),
        (dict(inner_dim=True), "inner_dim must be an int"),
        (dict(gate_init_bias="x"), "gate_init_bias must be a number"),
        (dict(sharpening=2.0), "sharpening must be a SharpeningSchedule"),
    ],
)
def test_bad_arguments_refused_before_the_model_changes(kwargs, match):
    torch.manual_seed(0)
    m = Net()
    x = torch.randn(2, 5, 3)
    ref = m(x)
    with pytest.raises(CanvasError, match=match):
        graft_looped_blocks(m, max_loops=2, **kwargs)
    assert not any(isinstance(b, LoopedBlockWrapper) for b in m.transformer_blocks)
    assert all(p.requires_grad for p in m.parameters())
    assert torch.equal(m(x), ref)


def test_inner_dim_other_than_the_adapters_hidden_size_refused():
    class WidthAdapter(BackboneAdapter):
        name = "width"
        block_attr = "transformer_blocks"

        def hidden_size(self, model):
            return model.embed_dim

    m = Net(d=12)
    with pytest.raises(BackboneError, match=r"inner_dim=8 .* 12 wide"):
        graft_looped_blocks(m, max_loops=2, adapter=WidthAdapter(), inner_dim=8)
    assert not any(isinstance(b, LoopedBlockWrapper) for b in m.transformer_blocks)
    blocks, _ = graft_looped_blocks(m, max_loops=2, adapter=WidthAdapter(), inner_dim=12)
    assert blocks[0].loop_emb.shape == (2, 12)
