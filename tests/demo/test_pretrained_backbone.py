"""The pretrained tiny CogVideoX shipped with the package, the script that makes it, and the loop
study over it (``benchmarks/loop_study.py --task blob``, in ``benchmarks/loop_study_blob.py``)."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _held_out_denoising_loss(model, prompt, n=64):
    from canvas_core.demo.pretrain import PretrainConfig, denoising_batch
    from canvas_core.demo.task import BlobTask

    b = denoising_batch(BlobTask(), n, torch.Generator().manual_seed(123), PretrainConfig(), (4, 16))
    text = b["text"] if prompt is None else prompt.expand(n, -1, -1)
    with torch.no_grad():
        out = model(hidden_states=b["noisy"], encoder_hidden_states=text, timestep=b["timestep"]).sample
    return torch.nn.functional.mse_loss(out, b["clean"]).item()


def test_shipped_weights_load_from_the_package():
    from canvas_core.demo.backbones import BACKBONES, COGVIDEOX_TINY
    from canvas_core.demo.pretrain import SHIPPED_NAME, load_shipped, shipped_weights

    files = resources.files("canvas_core.demo").joinpath("weights").joinpath(SHIPPED_NAME)
    assert files.joinpath("diffusion_pytorch_model.safetensors").is_file()
    assert files.joinpath("prompt.safetensors").is_file()
    with shipped_weights() as path:
        size = sum(f.stat().st_size for f in Path(path).iterdir())
    assert size < 2 * 1024 * 1024  # a few hundred KiB, well under the limit of a few MB
    model = load_shipped(BACKBONES["cogvideox"].load)
    for key, value in COGVIDEOX_TINY.items():  # exactly the demo's tiny configuration
        assert model.config[key] == value, key
    assert model.demo_prompt.shape == (4, 16)
    random = BACKBONES["cogvideox"].build(0)
    # the weights are trained: they denoise the blob videos far better than the same model at init
    trained, untrained = _held_out_denoising_loss(model, model.demo_prompt), _held_out_denoising_loss(random, None)
    assert trained < 0.5 * untrained


def test_package_data_globs_cover_the_shipped_files():
    """pyproject's package-data patterns put every shipped weight file into a wheel."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["canvas_core"]
    shipped = [p.relative_to(ROOT / "canvas_core").as_posix()
               for p in (ROOT / "canvas_core" / "demo" / "weights").rglob("*") if p.is_file()]
    assert {"demo/weights/cogvideox-blob/config.json", "demo/weights/cogvideox-blob/prompt.safetensors",
            "demo/weights/cogvideox-blob/diffusion_pytorch_model.safetensors"} <= set(shipped)
    for rel in shipped:
        if rel.endswith((".json", ".safetensors")):
            assert any(fnmatch.fnmatch(rel, pattern) for pattern in data), rel


def test_missing_shipped_weights_is_a_clear_error(monkeypatch):
    from canvas_core.demo import pretrain
    from canvas_core.errors import CanvasError

    monkeypatch.setattr(pretrain, "SHIPPED_NAME", "not-there")
    with pytest.raises(CanvasError, match="scripts/pretrain_backbone.py"):
        pretrain.shipped_weights()


def test_pretraining_is_deterministic_for_a_seed():
    from canvas_core.demo.pretrain import PretrainConfig, pretrain_cogvideox

    def run(seed):
        model, curve = pretrain_cogvideox(PretrainConfig(steps=3, batch_size=4, warmup=1, seed=seed), log=lambda _: None)
        return model.state_dict(), model.demo_prompt, curve

    (a, pa, ca), (b, pb, cb), (c, _, _) = run(0), run(0), run(1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(pa, pb) and ca[1:] == cb[1:] and ca[0][2] == cb[0][2]  # row 0 has no training loss (NaN)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def _script(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / ("scripts" if "pretrain" in name else "benchmarks")
                                                  / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the script sets its own thread count


def test_pretrain_script_writes_identical_weights_twice(tmp_path, capsys, keep_threads):
    script = _script("pretrain_backbone")
    for out in ("a", "b"):
        assert script.main(["--steps", "2", "--batch-size", "2", "--out", str(tmp_path / out), "--no-plot"]) == 0
    log = capsys.readouterr().out
    assert "held-out loss" in log and "wrote" in log
    for name in ("diffusion_pytorch_model.safetensors", "prompt.safetensors", "config.json", "pretrain.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # the written directory loads through the demo's --pretrained path, prompt included
    from canvas_core.demo.backbones import BACKBONES

    model = BACKBONES["cogvideox"].load(tmp_path / "a")
    assert model.demo_prompt.shape == (4, 16)


def test_pretrain_script_refuses_bad_options(tmp_path, capsys, keep_threads):
    assert _script("pretrain_backbone").main(["--steps", "0", "--out", str(tmp_path / "x"), "--no-plot"]) == 2
    assert "--steps must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bad_prompt_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    from canvas_core.demo.backbones import BACKBONES
    from canvas_core.errors import BackboneError

    BACKBONES["cogvideox"].build(0).save_pretrained(str(tmp_path))
    save_file({"prompt": torch.zeros(3, 16)}, str(tmp_path / "prompt.safetensors"))
    with pytest.raises(BackboneError, match=r"prompt of shape \(3, 16\)"):
        BACKBONES["cogvideox"].load(tmp_path)


def test_loop_study_quick_prints_one_row_per_condition():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loop_study.py"), "--task", "blob", "--quick"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    rows = re.findall(r"^(frozen|unfrozen), (\d) loops?\s+(\d)\s+([\d,]+)\s+([\d.]+) \+- ([\d.]+)\s+([\d.]+)\s+"
                      r"([\d.]+) \+- ([\d.]+)", out, flags=re.M)
    assert sorted((kind, int(n)) for kind, n, *_ in rows) == sorted(
        (kind, n) for kind in ("frozen", "unfrozen") for n in (1, 2, 3, 4))
    for kind, n, n2, params, mean, std, *_ in rows:
        assert n == n2 and float(std) >= 0 and float(mean) > 0
    params = {(kind, int(n)): int(p.replace(",", "")) for kind, n, _, p, *_ in rows}
    # frozen: loops and head only, growing with the loop count; unfrozen adds the whole backbone
    assert params[("frozen", 1)] < params[("frozen", 2)] < params[("frozen", 3)] < params[("frozen", 4)]
    assert all(params[("unfrozen", n)] > params[("frozen", n)] + 40_000 for n in (1, 2, 3, 4))
    assert "3 seeds" in out and "best loop count, frozen:" in out


def test_loop_study_merges_per_seed_files(tmp_path, capsys):
    import json

    study = _script("loop_study_blob")
    args = {"loops": "1,3", "steps": "5", "batch_size": "4", "lr": "0.003", "eval_samples": "16", "train_videos": "None"}

    def write(name, seed, errs):
        runs = {f"frozen, {n} loop{'s' if n > 1 else ''}": {"loops": n, "frozen": True, "trainable": 100 + n,
                                                           "loop_params": n, "action": [e], "reward": [0.1],
                                                           "vs_mean": [e / 0.3], "seconds": [1.0]}
                for n, e in zip((1, 3), errs)}
        (tmp_path / name).write_text(json.dumps({"args": args, "seeds": [seed], "runs": runs}))

    write("a.json", 0, (0.2, 0.1))
    write("b.json", 1, (0.4, 0.3))
    assert study.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                       "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^frozen, 1 loop\s+1\s+101\s+0\.3000 \+- 0\.1414", out, flags=re.M)  # mean, sample std
    assert re.search(r"^frozen, 3 loops\s+3\s+103\s+0\.2000 \+- 0\.1414", out, flags=re.M)
    assert "frozen, 3 loops    / frozen, 1 loop     0.67" in out and "seeds [0, 1]" in out
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    write("c.json", 1, (0.5, 0.5))  # seed 1 twice: refused
    assert study.main(["--merge", str(tmp_path / "b.json"), str(tmp_path / "c.json")]) == 2
