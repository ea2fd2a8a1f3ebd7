"""examples/rollout_world_model.py: trains briefly, then rolls out with every step equal to the full forward."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "rollout_world_model.py"


def test_the_world_model_example_rolls_out_exactly(capsys):
    spec = importlib.util.spec_from_file_location("canvas_rollout_example", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    short = mod.main(["--steps", "2", "--depth", "1", "--check"])
    assert short["step_s"] > 0 and short["error"] >= 0
    assert "every step equals the full forward" in capsys.readouterr().out
