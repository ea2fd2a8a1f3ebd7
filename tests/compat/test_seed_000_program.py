"""Seed 000, "Compile with process semantics (v2)": the snippet as written (``canvas_engineering``
-> ``canvas_core``), its printed output compared with the comments in the seed."""

from __future__ import annotations

import contextlib
import io
import textwrap

SNIPPET = textwrap.dedent('''
    from dataclasses import dataclass
    from canvas_core import Field, compile_program

    @dataclass
    class Robot:
        camera: Field = Field(6, 6, family="observation")
        belief: Field = Field(4, 4, family="state", tags=("belief",))
        action: Field = Field(1, 4, family="action", loss_weight=2.0)

    bound, program = compile_program(Robot(), T=8, d_model=256)
    # program.regions has typed metadata per field:
    print(program.regions["camera"].family)  # "observation"
    print(program.regions["belief"].carrier)  # "deterministic"
    # Auto-wired operators on connections:
    for c in program.schema.topology.connections:
        if c.operator != "attend":
            print(f"{c.src} → {c.dst}: {c.operator}")
''')

SEED_OUTPUT = ["observation", "deterministic",
               "camera → belief: observe", "belief → camera: predict", "belief → belief: integrate",
               "belief → action: act", "action → belief: intervene"]  # canvas-engineering 0.5.0 prints the same
# (the seed's comment lists three of the five lines; the package it documents prints all five)


def test_seed000_compile_program_snippet():
    out = io.StringIO()
    scope: dict = {"__name__": "seed000_v2"}
    with contextlib.redirect_stdout(out):
        exec(compile(SNIPPET, "<seed000>", "exec", dont_inherit=True), scope)
    assert out.getvalue().splitlines() == SEED_OUTPUT
    bound, program = scope["bound"], scope["program"]
    # compile_schema() still works unchanged: compile_program wraps it
    from canvas_core import compile_schema

    plain = compile_schema(scope["Robot"](), T=8, d_model=256)
    assert plain.layout == bound.layout
    assert [c.src for c in plain.topology.connections] == [c.src for c in bound.topology.connections]
    layout = bound.layout
    assert layout.T == 8 and layout.d_model == 256
    assert [layout.region_numel(n) for n in ("camera", "belief", "action")] == [8 * 36, 8 * 16, 8 * 4]
    assert layout.regions["action"].loss_weight == 2.0
    assert layout.regions["camera"].family == "observation"
    assert layout.regions["belief"].carrier == "deterministic"
    assert program.regions["belief"].tags == ("belief",)
    assert program.regions["action"].family == "action"
