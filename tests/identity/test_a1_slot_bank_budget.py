"""A binder whose slot bank alone would take more than the byte budget is refused, by
`create_binder` and at compile, before anything is allocated (1M slots x 4,096 wide is 16 GiB,
under the element limit; CANVAS_MAX_BYTES bounds it)."""

from __future__ import annotations

import pytest

from canvas_core.errors import SizeLimitError
from canvas_core.identity import create_binder


def test_create_binder_refuses_a_16_gib_slot_bank() -> None:
    with pytest.raises(SizeLimitError, match=r"create_binder\('cross_attention', d_model=4096, n_slots=1048576\): "
                                             r"the binder's \(1,048,576, 4,096\) float32 slot bank would take "
                                             r"16\.0 GiB.*fewer slots"):
        create_binder("cross_attention", d_model=4096, n_slots=1 << 20)


def test_the_budget_follows_the_byte_limit(monkeypatch) -> None:
    # 600,000 bytes: a (64, 8) binder's parameters are ~135 KB (its projections and MLP are counted too)
    monkeypatch.setenv("CANVAS_MAX_BYTES", "600000")
    assert create_binder("cross_attention", d_model=64, n_slots=8).n_slots == 8
    with pytest.raises(SizeLimitError, match="slot bank"):
        create_binder("cross_attention", d_model=64, n_slots=4096)


def test_sizes_that_are_not_ints_are_left_to_the_binder() -> None:
    from canvas_core.compiler.passes import check_slot_bank

    check_slot_bank(2.5, 4096, "x")
    check_slot_bank(1 << 20, None, "x")
    with pytest.raises(SizeLimitError, match="^region 'obj': the binder's"):
        check_slot_bank(1 << 20, 1 << 13, "region 'obj'")


def _program(slots: int, d_model: int):
    from canvas_core import CanvasLayout, CanvasProgram, CanvasSchema, CanvasTopology, Connection, IdentitySpec
    from canvas_core import RegionProgram

    layout = CanvasLayout(T=1, H=2, W=2, d_model=d_model, regions={"vis": (0, 1, 0, 1, 0, 2), "objs": (0, 1, 1, 2, 0, 2)})
    return CanvasProgram(schema=CanvasSchema(layout, CanvasTopology([Connection("objs", "vis")])), regions={
        "vis": RegionProgram(family="observation"),
        "objs": RegionProgram(family="state", identity=IdentitySpec(slot_capacity=slots))})


def test_compile_and_build_refuse_the_slot_bank_naming_the_region() -> None:
    from canvas_core.compiler import ProgramCompiler
    from canvas_core.identity import build_identity_binders

    with pytest.raises(SizeLimitError, match=r"^region 'objs': IdentitySpec\(binding_fn='cross_attention', "
                                             r"slot_capacity=1048576\): the binder's \(1,048,576, 4,096\)"):
        ProgramCompiler(_program(1 << 20, 4096)).compile()
    assert ProgramCompiler(_program(1 << 20, 8)).compile().identity["objs"]["slot_capacity"] == 1 << 20
    with pytest.raises(SizeLimitError, match=r"^region 'objs': IdentitySpec\(binding_fn='cross_attention'\): "
                                             r"create_binder\('cross_attention', d_model=4096"):
        build_identity_binders(_program(1 << 20, 8), d_model=4096)


def test_a_misspelt_binder_is_named_before_its_size_is_checked() -> None:
    from canvas_core.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="cross_atention"):
        create_binder("cross_atention", d_model=4096, n_slots=1 << 20)
