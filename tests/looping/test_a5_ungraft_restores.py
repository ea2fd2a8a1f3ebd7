"""ungraft_looped_blocks gives back the model as it was before the graft: every parameter's
``requires_grad`` (which the freeze strategies change), every module's training flag and hooks."""

import copy

import pytest
import torch
from torch import nn

import canvas_core as cc


class _Block(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.ln, self.fc = nn.LayerNorm(d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(self.ln(x))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_dim = 8
        self.patch_embed = nn.Linear(3, 8)
        self.blocks = nn.ModuleList([_Block(), _Block(), _Block()])
        self.proj_out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch_embed(x)
        for b in self.blocks:
            h = b(h)
        return self.proj_out(h)


def _noop_hook(*args: object) -> None:
    return None


def _mixed_net() -> _Net:
    torch.manual_seed(0)
    m = _Net()
    m.blocks[0].fc.bias.requires_grad_(False)  # the user's own choices, which a graft must keep
    m.proj_out.weight.requires_grad_(False)
    m.blocks[1].ln.eval()
    m.blocks[2].register_forward_hook(_noop_hook)
    m.register_forward_pre_hook(_noop_hook)
    return m


def _state(m: nn.Module) -> tuple:
    grads = {n: p.requires_grad for n, p in m.named_parameters()}
    modes = {n: mm.training for n, mm in m.named_modules()}
    hooks = {n: (list(mm._forward_hooks.values()), list(mm._forward_pre_hooks.values()),
                 list(mm._backward_hooks.values())) for n, mm in m.named_modules()}
    return grads, modes, hooks


@pytest.mark.parametrize("scope", ["block", (1, 3), "stack", "model"])
@pytest.mark.parametrize("freeze", ["full", "half", "none"])
def test_ungraft_restores_requires_grad_modes_and_hooks(freeze, scope):
    m = _mixed_net()
    before = _state(m)
    cc.graft_looped_blocks(m, max_loops=2, freeze=freeze, scope=scope, latent_channels=3)
    assert _state(m)[0] != before[0] or freeze == "none"  # the freeze did change flags
    cc.ungraft_looped_blocks(m)
    grads, modes, hooks = _state(m)
    assert grads == before[0]
    assert modes == before[1]
    assert hooks == before[2]


def test_ungraft_restores_requires_grad_of_a_deep_copy():
    m = _mixed_net()
    before = _state(m)[0]
    cc.graft_looped_blocks(m, max_loops=2, freeze="full", latent_channels=3)
    twin = copy.deepcopy(m)
    cc.ungraft_looped_blocks(twin)
    assert _state(twin)[0] == before


def test_ungraft_keeps_flags_of_parameters_added_after_the_graft():
    m = _mixed_net()
    cc.graft_looped_blocks(m, max_loops=2, freeze="full", latent_channels=3)
    m.extra = nn.Linear(2, 2)
    m.extra.weight.requires_grad_(False)
    cc.ungraft_looped_blocks(m)
    assert not m.extra.weight.requires_grad and m.extra.bias.requires_grad
    assert m.patch_embed.weight.requires_grad and not m.proj_out.weight.requires_grad


def _refusing_wrapper(block: nn.Module, idx: int, max_loops: int, dim: int) -> nn.Module:
    if idx == 2:
        raise RuntimeError("wrapper refuses block 2")
    w = nn.Module()
    w.original = block
    return w


def test_failed_graft_leaves_no_record_and_regraft_after_ungraft_restores_again():
    m = _mixed_net()
    before = _state(m)[0]
    with pytest.raises(RuntimeError, match="refuses block 2"):
        cc.graft_looped_blocks(m, max_loops=2, freeze="full", wrapper_class=_refusing_wrapper)
    assert _state(m)[0] == before and not any("pre_graft" in k for k in m.__dict__)
    for _ in range(2):
        cc.graft_looped_blocks(m, max_loops=2, freeze="full", latent_channels=3)
        cc.ungraft_looped_blocks(m)
        assert _state(m)[0] == before
        assert not any("pre_graft" in k for k in m.__dict__)


def test_ungraft_restores_requires_grad_on_a_plugin_backbone():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                          embed_dim=32, num_heads=2, num_classes=5)
    m.head.weight.requires_grad_(False)
    before = _state(m)
    cc.graft_looped_blocks(m, max_loops=2, freeze="full")
    cc.ungraft_looped_blocks(m)
    assert _state(m) == before
