"""The learning recipe each region family gets when none is given."""

import pytest

from canvas_core import CanvasError, FAMILY_DEFAULTS, LearningSpec, default_learning


def test_default_learning():
    assert default_learning("observation") == LearningSpec(
        mode="ssl_prediction", losses=("next_step", "masked_prediction"), compile_mode="freeze")
    assert default_learning("memory").compile_mode == "export"
    assert default_learning("action").losses == ("task",)
    assert set(FAMILY_DEFAULTS) == {"observation", "state", "memory", "residual", "action"}
    assert default_learning("my_custom_family") == LearningSpec()
    with pytest.raises(CanvasError):
        default_learning(3)


def test_defaults_equal_canvas_engineering():
    ce = pytest.importorskip("canvas_engineering.learning")
    assert set(FAMILY_DEFAULTS) == set(ce.FAMILY_DEFAULTS)
    for fam, spec in ce.FAMILY_DEFAULTS.items():
        ours = default_learning(fam)
        assert isinstance(ours, LearningSpec)
        assert (ours.mode, tuple(ours.losses), ours.compile_mode) == (spec.mode, tuple(spec.losses), spec.compile_mode)
    other = ce.default_learning("unknown_family")
    mine = default_learning("unknown_family")
    assert (mine.mode, tuple(mine.losses), mine.compile_mode) == (other.mode, tuple(other.losses), other.compile_mode)


def test_import_is_pure_python():
    import subprocess
    import sys
    code = ("import sys, canvas_core.program.learning, canvas_core.program.cortex, canvas_core.program.clock_ir, "
            "canvas_core.schema.masks; assert 'torch' not in sys.modules and 'numpy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
