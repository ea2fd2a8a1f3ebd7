"""``BoundField.spec`` may be set (as in canvas-engineering) and an explicit spec wins over the
layout's; bound schemas pickle both ways between versions; the warning about an ``on_event``
source naming no region says when the clock does fire, and points at the user's call."""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass

import pytest

import canvas_core as cc
from canvas_core import CanvasProgram, Field, RegionSpec, compile_program, compile_schema
from canvas_core.errors import CanvasTypeError
from canvas_core.program.bound import BoundField
from canvas_core.program.specs import ClockSpec, LearningSpec
from canvas_core.runtime.scheduling import RegionScheduler


@dataclass
class _Robot:
    a: Field = Field(2, 2)
    b: Field = Field(1, 1)


def test_a_spec_set_on_a_bound_field_is_kept() -> None:
    bound = compile_schema(_Robot(), T=2, d_model=8)
    bound["a"].spec = RegionSpec((0, 1, 0, 1, 0, 1))
    assert bound["a"].spec.bounds == (0, 1, 0, 1, 0, 1)
    assert bound.region_specs["a"].bounds == (0, 1, 0, 1, 0, 1)
    bound.layout.regions["a"] = RegionSpec((1, 2, 0, 1, 0, 1))  # the explicit one still wins
    assert bound["a"].spec.bounds == (0, 1, 0, 1, 0, 1)
    with pytest.raises(CanvasTypeError, match=r"BoundField 'a': spec must be a RegionSpec, got tuple"):
        bound["a"].spec = (0, 1, 0, 1, 0, 1)


def test_a_spec_given_to_the_constructor_wins_and_the_compiled_one_follows_the_layout() -> None:
    bound = compile_schema(_Robot(), T=2, d_model=8)

    class MyField(BoundField):
        pass

    assert MyField("a", RegionSpec((0, 1, 0, 1, 0, 1)), bound).spec.bounds == (0, 1, 0, 1, 0, 1)
    bound.layout.regions["a"] = RegionSpec((1, 2, 0, 1, 0, 1))
    assert bound["a"].spec.bounds == (1, 2, 0, 1, 0, 1)  # compiled: follows the layout


def _as_an_older_version_pickled_it(bound: cc.program.bound.BoundSchema) -> bytes:
    """The state of canvas-core before the spec followed the layout: ``spec`` and
    ``region_specs`` plain attributes, no ``_spec``."""
    for f in bound._fields.values():
        f.__dict__["spec"] = f.__dict__.pop("_spec")
        f.__dict__.pop("_follows", None)
    bound.__dict__["region_specs"] = {n: f.__dict__["spec"] for n, f in bound._fields.items()}
    return _dump_dicts(bound)


def _dump_dicts(bound: object) -> bytes:
    """Pickle with the plain ``__dict__`` (as before ``__getstate__`` existed)."""

    class _Plain(pickle.Pickler):
        def reducer_override(self, obj: object) -> object:
            if isinstance(obj, (BoundField, cc.program.bound.BoundSchema)):
                return (object.__new__, (type(obj),), dict(obj.__dict__))
            return NotImplemented

    import io

    out = io.BytesIO()
    _Plain(out, protocol=4).dump(bound)
    return out.getvalue()


def test_a_bound_schema_pickled_by_an_older_version_survives_a_region_leaving() -> None:
    bound = pickle.loads(_as_an_older_version_pickled_it(compile_schema(_Robot(), T=2, d_model=8)))
    assert "_spec" not in bound["a"].__dict__ and bound["a"].spec.bounds == (0, 2, 0, 2, 0, 2)
    del bound.layout.regions["a"]
    assert bound["a"].spec.bounds == (0, 2, 0, 2, 0, 2)  # the compiled one
    assert "a -> (t=0-2, 0-2, 0-2) 8pos" in bound.summary()


def test_a_bound_schema_pickle_holds_what_older_versions_read() -> None:
    bound = compile_schema(_Robot(), T=2, d_model=8)
    again = pickle.loads(pickle.dumps(bound))
    assert again["b"].__dict__["spec"] == bound["b"].spec
    assert again.__dict__["region_specs"] == bound.region_specs
    assert again["a"].spec is again.layout.regions["a"]  # still follows its layout


@dataclass
class _Listener:
    cam: Field = Field(2, 2)
    plan: Field = Field(1, 1, clock=ClockSpec(mode="on_event", event_source="env.reward", event_threshold=0.5))


def test_the_event_source_warning_says_when_the_clock_fires_and_points_at_the_call() -> None:
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        bound, program = compile_program(_Listener(), T=2, d_model=8)
        CanvasProgram.from_json(program.to_json())
        CanvasProgram(schema=program.schema, regions=program.regions)
    mine = [w for w in got if "event_source 'env.reward'" in str(w.message)]
    assert len(mine) == 3 and {w.filename for w in mine} == {__file__}
    text = str(mine[0].message)
    assert "never fires" not in text
    assert "reads summaries['env']['reward'], so this clock fires only when the summaries passed to it " \
           "hold that key" in text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert RegionScheduler(program).fires("plan", 1, summaries={"env": {"reward": 1.0}})


def test_the_compile_mode_warning_points_at_the_call() -> None:
    @dataclass
    class R:
        a: Field = Field(1, 1, compile_mode="export", learning=LearningSpec(compile_mode="freeze"))

    with pytest.warns(UserWarning, match="learning.compile_mode wins") as got:
        compile_program(R(), T=2, d_model=8)
    assert [w.filename for w in got] == [__file__]


def test_num_positions_counts_an_explicitly_set_spec_as_canvas_engineering_does():
    ce = pytest.importorskip("canvas_engineering")

    @dataclass
    class Theirs:
        a: ce.Field = ce.Field(2, 2)
        b: ce.Field = ce.Field(1, 1)

    counts = []
    for bound, spec in ((ce.compile_schema(Theirs(), T=2, H=4, W=4, d_model=8), ce.RegionSpec),
                        (compile_schema(_Robot(), T=2, H=4, W=4, d_model=8), RegionSpec)):
        before = bound["a"].num_positions
        bound["a"].spec = spec((0, 1, 0, 4, 0, 4))
        counts.append((before, bound["a"].num_positions))
    assert counts[1] == counts[0] == (8, 16)


def test_an_old_pickle_keeps_a_spec_set_by_hand() -> None:
    bound = compile_schema(_Robot(), T=2, d_model=8)
    bound["a"].spec = RegionSpec((0, 1, 0, 1, 0, 1))
    back = pickle.loads(_as_an_older_version_pickled_it(bound))
    assert back["a"].spec.bounds == (0, 1, 0, 1, 0, 1) and back["a"].num_positions == 1
    assert back["b"].spec == back.layout.regions["b"]  # untouched fields still follow the layout


def test_a_pickle_with_a_private_spec_and_no_follow_flag_follows_the_layout() -> None:
    """States of the versions whose spec was a read-only property (``_spec``, no ``_follows``)."""
    bound = compile_schema(_Robot(), T=2, d_model=8)
    bound.layout.regions["a"] = RegionSpec((0, 1, 0, 1, 0, 1))
    for f in bound._fields.values():
        f.__dict__.pop("_follows", None)
    back = pickle.loads(_dump_dicts(bound))
    assert back["a"].spec.bounds == (0, 1, 0, 1, 0, 1) and back["a"].num_positions == len(back["a"].indices()) == 1
