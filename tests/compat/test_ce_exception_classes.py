"""canvas-engineering code that catches the exceptions canvas-engineering raises keeps catching them
after the import switch: each canvas-core error for the same bad input is also an instance of
canvas-engineering's class (an unknown region: ``KeyError``; an unknown attention type:
``ValueError``; a missing schema file: ``FileNotFoundError``), and its text is not quoted the way a
plain ``KeyError`` quotes its message."""

from __future__ import annotations

import errno
import pickle

import pytest

torch = pytest.importorskip("torch")

import canvas_core  # noqa: E402
import canvas_core.errors as errors  # noqa: E402
from canvas_core.errors import (  # noqa: E402
    CanvasError,
    SchemaFormatError,
    UnknownNameError,
    UnknownNameKeyError,
    UnknownRegionError,
)


def _layout(ce):
    return ce.CanvasLayout(T=2, H=4, W=4, d_model=8, regions={"a": (0, 2, 0, 2, 0, 4), "b": (0, 2, 2, 4, 0, 4)})


def _dispatcher_with_unknown_type(ce):
    topo = ce.CanvasTopology(connections=[ce.Connection(src="a", dst="b", fn="no_such_type")])
    return ce.AttentionDispatcher(topo, _layout(ce), d_model=8, n_heads=2)


#: bad input -> the class canvas-engineering raises (its documentation, or its dict lookups).
CASES = {
    "create_attention unknown type": (ValueError, lambda ce: ce.create_attention("no_such_type", d_model=8)),
    "dispatcher with an unknown type": (ValueError, _dispatcher_with_unknown_type),
    "ATTENTION_REGISTRY[unknown]": (KeyError, lambda ce: ce.ATTENTION_REGISTRY["no_such_type"]),
    "ATTENTION_TYPES[unknown]": (KeyError, lambda ce: ce.ATTENTION_TYPES["no_such_type"]),
    "layout.region_spec": (KeyError, lambda ce: _layout(ce).region_spec("zz")),
    "layout.region_size": (KeyError, lambda ce: _layout(ce).region_size("zz")),
    "layout.region_numel": (KeyError, lambda ce: _layout(ce).region_numel("zz")),
    "layout.region_indices": (KeyError, lambda ce: _layout(ce).region_indices("zz")),
    "layout.region_indices_at_t": (KeyError, lambda ce: _layout(ce).region_indices_at_t("zz", 0)),
    "layout.region_timesteps": (KeyError, lambda ce: _layout(ce).region_timesteps("zz")),
    "canvas.extract": (KeyError, lambda ce: ce.SpatiotemporalCanvas(_layout(ce)).extract(torch.zeros(1, 32, 8), "zz")),
    "canvas.place": (KeyError, lambda ce: ce.SpatiotemporalCanvas(_layout(ce)).place(
        torch.zeros(1, 32, 8), torch.zeros(1, 8, 8), "zz")),
    "mask_to_index_pairs": (KeyError, lambda ce: ce.mask_to_index_pairs(ce.MaskSpec(kind="full"), _layout(ce), "a", "zz")),
    "ResidualAccumulator.update": (KeyError, lambda ce: ce.ResidualAccumulator(["a"]).update("zz", torch.zeros(3))),
}


def _raised(fn, package):
    with pytest.raises(Exception) as info:
        fn(package)
    return info.value


@pytest.mark.parametrize("label", sorted(CASES))
def test_canvas_engineering_except_clause_still_catches(label):
    expected, fn = CASES[label]
    err = _raised(fn, canvas_core)
    assert isinstance(err, expected) and isinstance(err, CanvasError), (label, type(err).__mro__)
    assert isinstance(err, ValueError), "canvas-core's own promise: also a ValueError"
    text = str(err)
    assert text and not text.startswith(("'", '"')), f"{label}: message quoted like a KeyError: {text!r}"


@pytest.mark.parametrize("label", sorted(CASES))
def test_same_class_as_canvas_engineering_raises(label):
    ce = pytest.importorskip("canvas_engineering")
    _, fn = CASES[label]
    theirs, ours = _raised(fn, ce), _raised(fn, canvas_core)
    assert isinstance(ours, type(theirs)), (label, type(theirs), type(ours).__mro__)


def test_unknown_attention_type_message_keeps_the_phrase_and_attributes():
    with pytest.raises(ValueError) as info:
        canvas_core.create_attention("cross_atention", d_model=8)
    err = info.value
    assert isinstance(err, UnknownNameKeyError) and isinstance(err, UnknownNameError) and isinstance(err, KeyError)
    assert str(err).startswith("Unknown attention type: 'cross_atention'.")
    assert err.suggestion == "cross_attention" and err.kind == "attention"


def test_unknown_region_error_is_every_builtin_it_was_and_a_key_error():
    with pytest.raises(KeyError) as info:
        _layout(canvas_core).region_indices("zz")
    err = info.value
    assert isinstance(err, UnknownRegionError) and isinstance(err, LookupError) and isinstance(err, ValueError)
    assert str(err).startswith("unknown region 'zz'") and str(err) == err.args[0]
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is UnknownRegionError and str(again) == str(err)


def test_schema_file_not_found_error_is_a_file_not_found_error():
    err = errors.SchemaFileNotFoundError("schema file '/nowhere/s.json' does not exist", "/nowhere/s.json")
    assert isinstance(err, FileNotFoundError) and isinstance(err, OSError)
    assert isinstance(err, SchemaFormatError) and isinstance(err, ValueError) and isinstance(err, CanvasError)
    assert err.errno == errno.ENOENT and err.filename == "/nowhere/s.json"
    assert str(err) == "schema file '/nowhere/s.json' does not exist"  # not "[Errno 2] ...: '/nowhere/s.json'"
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is errors.SchemaFileNotFoundError and str(again) == str(err) and again.filename == err.filename


@pytest.mark.parametrize("cls_name", ["CanvasSchema", "CanvasProgram"])
def test_from_json_of_a_missing_file_is_a_file_not_found_error(tmp_path, cls_name):
    with pytest.raises(FileNotFoundError) as info:
        getattr(canvas_core, cls_name).from_json(tmp_path / "missing.json")
    assert isinstance(info.value, SchemaFormatError) and "does not exist" in str(info.value)


@pytest.mark.parametrize("kind, extra", [("full", {}), ("tile", {}), ("sparse", {"pattern": ((1, 0), (0, 1))})])
def test_mask_pairs_of_an_unknown_region_is_a_key_error(kind, extra):
    from canvas_core.schema.mask_pairs import mask_to_index_pairs
    from canvas_core.schema.mask_spec import MaskSpec

    layout = canvas_core.CanvasLayout(T=2, H=4, W=4, d_model=8,
                                      regions={"a": (0, 2, 0, 2, 0, 4), "b": (0, 2, 2, 4, 0, 4)})
    with pytest.raises(KeyError) as info:  # canvas-engineering's except KeyError keeps catching
        mask_to_index_pairs(MaskSpec(kind=kind, **extra), layout, "a", "zz")
    assert isinstance(info.value, errors.CanvasError) and "'zz'" in str(info.value)
