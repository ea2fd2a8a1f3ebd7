"""Pretraining of the demo's tiny CogVideoX on moving-blob latent videos, and the shipped weights.

The demo needs a backbone that has *learned something* about its videos, otherwise a frozen
backbone gives loops nothing to re-use. :func:`pretrain_cogvideox` makes one on the CPU in a few
minutes: the tiny ``CogVideoXTransformer3DModel`` of :data:`canvas_core.demo.backbones.COGVIDEOX_TINY`
learns to denoise latent videos of one or two Gaussian blobs moving at constant velocities
(diffusion-style: a noise level per video, the clean video as target), and in half the videos one
frame is replaced by pure noise, so that restoring it requires following the motion through the
other frames. No action or reward label is ever seen during pretraining. The 4 prompt tokens
are learned with the model (registers the denoiser may use) and saved next to it; the demo feeds
them as the prompt.

``scripts/pretrain_backbone.py`` is the command line around it; its output directory (a
``save_pretrained`` directory, ``config.json`` + ``diffusion_pytorch_model.safetensors``, plus
``prompt.safetensors`` and ``pretrain.json``) ships
inside the package as ``canvas_core/demo/weights/cogvideox-blob`` and is found with
:func:`shipped_weights`.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import torch
from torch import nn

from canvas_core.demo.backbones import COGVIDEOX_TINY
from canvas_core.demo.task import BlobTask
from canvas_core.errors import CanvasError

__all__ = ["PretrainConfig", "pretrain_cogvideox", "shipped_weights", "load_shipped", "SHIPPED_NAME", "PROMPT_FILE",
           "denoising_batch"]

SHIPPED_NAME = "cogvideox-blob"
PROMPT_FILE = "prompt.safetensors"


@dataclass
class PretrainConfig:
    """Options of one pretraining run (the flags of ``scripts/pretrain_backbone.py``)."""

    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    warmup: int = 100
    masked_frame_prob: float = 0.5
    second_blob_prob: float = 0.5
    learned_prompt: bool = True


def _alpha_bar(t: torch.Tensor) -> torch.Tensor:
    """Cosine noise schedule: fraction of signal variance left at timestep ``t`` in ``[0, 1000)``."""
    s = 0.008
    f = torch.cos(((t.float() / 1000.0) + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    return (f / f0).clamp(1e-4, 1.0)


def denoising_batch(task: BlobTask, batch_size: int, gen: torch.Generator, cfg: PretrainConfig,
                    text_shape: tuple) -> Dict[str, torch.Tensor]:
    """One pretraining batch: noisy videos, their timesteps, random prompts and the clean targets."""
    clean = task.sample(batch_size, gen).video  # (B, F, C, H, W)
    other = task.sample(batch_size, gen).video
    two = (torch.rand(batch_size, generator=gen) < cfg.second_blob_prob).float().view(-1, 1, 1, 1)
    clean[:, :, 0] += two * other[:, :, 0]  # a second moving blob in half the videos
    t = torch.randint(0, 1000, (batch_size,), generator=gen)
    ab = _alpha_bar(t).view(-1, 1, 1, 1, 1)
    eps = torch.randn(clean.shape, generator=gen)
    noisy = ab.sqrt() * clean + (1 - ab).sqrt() * eps
    # one frame of pure noise in some videos: it can only be restored from the motion in the others
    F = clean.shape[1]
    hide = torch.rand(batch_size, generator=gen) < cfg.masked_frame_prob
    frame = torch.randint(0, F, (batch_size,), generator=gen)
    pure = torch.randn(clean.shape, generator=gen)
    sel = torch.zeros(batch_size, F, dtype=torch.bool)
    sel[torch.arange(batch_size), frame] = hide
    noisy = torch.where(sel.view(batch_size, F, 1, 1, 1), pure, noisy)
    text = torch.randn(batch_size, *text_shape, generator=gen)
    return {"noisy": noisy, "timestep": t, "text": text, "clean": clean}


def _lr_factor(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _check(cfg: PretrainConfig) -> None:
    for name in ("steps", "batch_size", "warmup"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "warmup" else 1):
            raise CanvasError(f"--{name.replace('_', '-')} must be an integer >= {0 if name == 'warmup' else 1}, "
                              f"got {value!r}")
    if not (isinstance(cfg.lr, (int, float)) and cfg.lr > 0):
        raise CanvasError(f"--lr must be a number > 0, got {cfg.lr!r}")
    for name in ("masked_frame_prob", "second_blob_prob"):
        value = getattr(cfg, name)
        if not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise CanvasError(f"{name} must be a probability in [0, 1], got {value!r}")


def pretrain_cogvideox(cfg: PretrainConfig, out: Optional[Path] = None,
                       log: Callable[[str], None] = print, progress: bool = False):
    """Pretrain the tiny CogVideoX on blob-video denoising; returns ``(model, curve)``.

    ``curve`` is a list of ``(step, training loss averaged over the last 50 steps, held-out loss)``
    rows (held-out: 256 fixed videos, every ``steps // 20`` steps and at the end). With ``out``,
    the model is written there with ``save_pretrained`` (safetensors) together with the learned
    prompt (``prompt.safetensors``; also set as ``model.demo_prompt``) and ``pretrain.json`` (the
    options and the curve). The run is deterministic for ``cfg.seed``: the
    same options give bit-identical weights on the same machine and thread count.
    """
    from diffusers import CogVideoXTransformer3DModel

    _check(cfg)
    torch.manual_seed(cfg.seed)
    model = CogVideoXTransformer3DModel(**COGVIDEOX_TINY)
    task = BlobTask(frames=4, channels=COGVIDEOX_TINY["in_channels"], height=8, width=8)
    text_shape = (COGVIDEOX_TINY["max_text_seq_length"], COGVIDEOX_TINY["text_embed_dim"])
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    held = denoising_batch(task, 256, torch.Generator().manual_seed(cfg.seed + 7777), cfg, text_shape)
    # the prompt: learned with the model (4 "register" tokens the denoiser may use as scratch space)
    # or a fresh random one per video
    prompt = nn.Parameter(torch.randn(*text_shape) * 0.5) if cfg.learned_prompt else None
    if prompt is not None:
        held["text"] = None
    params = list(model.parameters()) + ([prompt] if prompt is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))

    def forward(b: Dict[str, torch.Tensor]) -> torch.Tensor:
        B = b["noisy"].shape[0]
        text = b["text"] if prompt is None else prompt.unsqueeze(0).expand(B, -1, -1)
        return model(hidden_states=b["noisy"], encoder_hidden_states=text, timestep=b["timestep"]).sample

    @torch.no_grad()
    def held_out() -> float:
        model.eval()
        loss = sum(torch.nn.functional.mse_loss(forward({k: None if v is None else v[i:i + 64] for k, v in held.items()}),
                                                held["clean"][i:i + 64]).item() for i in range(0, 256, 64)) / 4
        model.train()
        return loss

    curve: List[tuple] = [(0, float("nan"), held_out())]
    every = max(1, cfg.steps // 20)
    recent: List[float] = []
    model.train()
    steps: Iterator[int] = iter(range(cfg.steps))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(range(cfg.steps), desc="pretrain cogvideox", dynamic_ncols=True, mininterval=1.0)
        steps = iter(bar)
    for step in steps:
        batch = denoising_batch(task, cfg.batch_size, gen, cfg, text_shape)
        loss = torch.nn.functional.mse_loss(forward(batch), batch["clean"])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        recent = (recent + [loss.item()])[-50:]
        if (step + 1) % every == 0 or step + 1 == cfg.steps:
            curve.append((step + 1, sum(recent) / len(recent), held_out()))
            if bar is None:
                log(f"  step {step + 1:>5}  train loss {curve[-1][1]:.4f}  held-out loss {curve[-1][2]:.4f}")
            else:
                bar.set_postfix(loss=f"{curve[-1][1]:.4f}", held_out=f"{curve[-1][2]:.4f}", refresh=False)
    model.eval()
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out), safe_serialization=True)
        from canvas_core._safe_write import atomic_write_text
        from canvas_core.checkpoints.tensors import save_safetensors_atomic

        if prompt is not None:  # NaN refused, atomic write (canvas_core/_safe_write.py)
            save_safetensors_atomic({"prompt": prompt}, out / PROMPT_FILE, None, "the demo prompt")
        meta = {"task": "denoise moving-blob latent videos (one frame fully noised in some)",
                "options": asdict(cfg), "torch": torch.__version__,
                "curve": [{"step": s, "train_loss": None if math.isnan(tl) else tl, "held_out_loss": hl}
                          for s, tl, hl in curve]}
        atomic_write_text(out / "pretrain.json", json.dumps(meta, indent=1) + "\n", "the pretraining record")
    if prompt is not None:
        model.demo_prompt = prompt.detach().clone()
    return model, curve


def shipped_weights() -> contextlib.AbstractContextManager:
    """Context manager giving a filesystem ``Path`` to the shipped pretrained tiny CogVideoX
    (``canvas_core/demo/weights/cogvideox-blob``), found with ``importlib.resources`` so that it
    works from an editable install, a wheel or a zip."""
    from importlib import resources

    root = resources.files("canvas_core.demo").joinpath("weights").joinpath(SHIPPED_NAME)
    if not root.joinpath("config.json").is_file():
        raise CanvasError(f"the shipped demo weights are missing from the installed package ({root}); reinstall "
                          "canvas-core, or recreate them with: python scripts/pretrain_backbone.py")
    return resources.as_file(root)


def load_shipped(loader: Callable[[Path], nn.Module]) -> nn.Module:
    """The shipped backbone, loaded with ``loader`` (the demo's ``--pretrained`` loader)."""
    with shipped_weights() as path:
        return loader(Path(path))
