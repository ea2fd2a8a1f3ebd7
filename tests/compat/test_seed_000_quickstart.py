"""Seed 000 quick-start, as written, with a tiny CogVideoX checkpoint in place of the 2B model."""

import textwrap

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("canvas_plugin_cogvideox")

# The seed's snippet; only the checkpoint path changes (and canvas_engineering -> canvas_core).
SEED_SNIPPET = textwrap.dedent("""
    from canvas_core import graft_looped_blocks, CurriculumScheduler
    from diffusers import CogVideoXTransformer3DModel
    import torch
    # Load pretrained video diffusion model
    transformer = CogVideoXTransformer3DModel.from_pretrained(
    "THUDM/CogVideoX-2b", subfolder="transformer", torch_dtype=torch.bfloat16
    )
    # Graft 3-loop attention onto all 30 frozen DiT blocks
    looped_blocks, action_head = graft_looped_blocks(
    transformer,
    max_loops=3, # 3 is optimal (empirically validated)
    freeze="full", # freeze backbone, train only loop params
    action_dim=7, # 6DOF end-effector + gripper
    )
    # Only 350K params to optimize
    optimizer = torch.optim.AdamW(
    [p for b in looped_blocks for p in b.parameters() if p.requires_grad]
    + list(action_head.parameters()),
    lr=1e-4,
    )
    # Curriculum: gradually ramp from 1 to 3 loops during training
    scheduler = CurriculumScheduler(max_loops=3, total_steps=5000)
""")

TINY = dict(
    num_attention_heads=2,
    attention_head_dim=8,
    in_channels=16,
    out_channels=16,
    time_embed_dim=8,
    text_embed_dim=16,
    num_layers=3,
    sample_width=8,
    sample_height=8,
    sample_frames=9,
    patch_size=2,
    max_text_seq_length=4,
)


def test_seed_000_quickstart_runs_and_trains(tmp_path):
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(0)
    CogVideoXTransformer3DModel(**TINY).save_pretrained(tmp_path / "transformer")
    code = SEED_SNIPPET.replace('"THUDM/CogVideoX-2b"', repr(str(tmp_path)))
    ns: dict = {}
    exec(compile(code, "seed-000-quickstart", "exec"), ns)
    transformer, blocks, head = ns["transformer"], ns["looped_blocks"], ns["action_head"]
    optimizer, scheduler = ns["optimizer"], ns["scheduler"]
    assert transformer.dtype == torch.bfloat16 and len(blocks) == 3
    inner = 16
    n_loop = sum(p.numel() for b in blocks for p in b.parameters() if p.requires_grad)
    assert n_loop == 3 * (2 * 3 * inner + 2)  # the documented formula (345,660 for CogVideoX-2B)
    assert n_loop == sum(p.numel() for p in transformer.parameters() if p.requires_grad)

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 16, 8, 8, generator=g).to(torch.bfloat16)
    enc = torch.randn(2, 4, 16, generator=g).to(torch.bfloat16)
    target = torch.randn(2, 7, generator=g)
    t = torch.tensor([10, 900])
    before = [p.detach().clone() for p in head.parameters()] + [
        b.loop_emb.detach().clone() for b in blocks
    ]
    transformer.train()
    losses, loops = [], []
    scheduler = type(scheduler)(max_loops=3, total_steps=4)  # compress the 5000-step ramp
    for step in range(6):
        loops.append(scheduler.step(blocks, step))
        out = transformer(hidden_states=x, encoder_hidden_states=enc, timestep=t).sample
        loss = torch.nn.functional.mse_loss(head(out.float()), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert loops[0] == 1 and loops[-1] == 3 and sorted(set(loops)) == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    after = [p.detach() for p in head.parameters()] + [b.loop_emb.detach() for b in blocks]
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    assert not any(
        p.grad is not None for n, p in transformer.named_parameters() if "loop_" not in n
    )
