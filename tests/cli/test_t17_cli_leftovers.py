"""t17 leftovers of the command-line fixes.

An empty output path or folder (``canvas draw -o ''``, ``canvas demo --out ''``) and an empty input
path (``canvas embed ''``, ``canvas demo --pretrained ''``) are named as empty, not as the current
directory ``'.'`` they would become; a registry entry's errors call it by its singular noun
(``embedder 'x'``, not the registry kind ``embedders 'x'``); an all-zero ``semantic_embedding``
already in a region or file still loads (``transfer_distance`` refuses it); the docs say so.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from canvas_core import RegionSpec, transfer_distance
from canvas_core.cli import main
from canvas_core.errors import CanvasError, FactoryError, SchemaError
from canvas_core.plugins import KINDS, Spec, register_embedder, unregister_embedder
from canvas_core.schema import CanvasLayout, CanvasSchema

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _schema_dict(embedding=None) -> dict:
    lay = CanvasLayout(T=1, spatial_shape=(2,), d_model=8, regions={"cam": (0, 1, 0, 1), "arm": (0, 1, 1, 2)})
    doc = CanvasSchema(layout=lay).to_dict()
    if embedding is not None:
        doc["regions"]["arm"]["semantic_embedding"] = embedding
    return doc


def _usage_error(argv, capsys) -> str:
    """The one-line argparse answer (exit 2) to ``argv``."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# --- 1: empty output paths ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["draw", "example", "-o", ""], ["draw", "example", "--output", "  "]])
def test_draw_refuses_an_empty_output_path_as_empty(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = _usage_error(argv, capsys)
    assert "the output path is empty" in err and "directory" not in err
    assert list(tmp_path.iterdir()) == []  # nothing drawn into the current folder


@pytest.mark.parametrize("task", ["life", "blob"])
def test_demo_refuses_an_empty_output_folder(task, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = _usage_error(["demo", "--task", task, "--quick", "--out", ""], capsys)
    assert "argument --out: the output folder is empty ('')" in err
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing written into the current folder


# --- 2: empty input paths ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["", " "])
def test_embed_refuses_an_empty_input_path_as_empty(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = _usage_error(["embed", path], capsys)
    assert "argument schema: the input path is empty" in err
    assert "'.'" not in err and "not a file" not in err


def test_demo_refuses_an_empty_pretrained_path(capsys):
    err = _usage_error(["demo", "--task", "blob", "--quick", "--pretrained", ""], capsys)
    assert "argument --pretrained: the input path is empty ('')" in err and "'.'" not in err


@pytest.mark.parametrize("command", ["compile", "draw"])
def test_commands_taking_a_file_or_example_still_refuse_an_empty_name(command, capsys):
    assert main([command, ""]) == 2
    err = capsys.readouterr().err
    assert "'' is not a file name" in err and "'.'" not in err


def test_a_real_input_path_still_works(tmp_path, capsys):
    name = f"t17l_{uuid.uuid4().hex[:8]}"
    register_embedder(name, type("E", (), {"embed": lambda self, texts: [[1.0, 0.5] for _ in texts]}))
    try:
        path = tmp_path / "s.json"
        path.write_text(json.dumps(_schema_dict()))
        assert main(["embed", str(path), "--embedder", name]) == 0
        assert json.loads(capsys.readouterr().out)["regions"]["cam"]["semantic_embedding"] == [1.0, 0.5]
    finally:
        unregister_embedder(name)


# --- 3: singular nouns in a registry entry's errors --------------------------------------------------
NOUN = {"attention": "attention type", "kernels": "attention kernel", "backbones": "backbone adapter",
        "identity": "identity binder", "embedders": "embedder"}


def _broken_ctor(*args, **kwargs):
    raise RuntimeError("ctor broke")


@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_constructor_is_named_by_its_singular_noun(kind):
    assert set(KINDS) == set(NOUN)
    with pytest.raises(FactoryError) as info:
        Spec(name="e_ctor", factory=_broken_ctor, kind=kind).create(1)
    msg = str(info.value)
    assert msg.startswith(f"{NOUN[kind]} 'e_ctor' from ") and "ctor broke" in msg
    if kind != "attention":
        assert f"{kind} 'e_ctor'" not in msg


@pytest.mark.parametrize("kind", KINDS)
def test_other_spec_errors_use_the_singular_noun_too(kind):
    with pytest.raises(CanvasError, match=rf"^{NOUN[kind]} 'x': factory must be"):
        Spec(name="x", factory=42, kind=kind)
    with pytest.raises(CanvasError, match=rf"^{NOUN[kind]} 'x' \(factory 'no_such_module_t17zz:X'.*failed to load"):
        Spec(name="x", factory="no_such_module_t17zz:X", kind=kind).load()
    # the name as register_<stem> was given: the existing "invalid attention name" wording stays
    stem = {"attention": "attention", "kernels": "kernel", "backbones": "backbone",
            "identity": "identity binder", "embedders": "embedder"}[kind]
    with pytest.raises(CanvasError, match=rf"^invalid {stem} name 'bad name!'"):
        Spec(name="bad name!", factory=_broken_ctor, kind=kind)


def test_canvas_embed_names_an_embedder_whose_constructor_fails(tmp_path, capsys):
    name = f"t17l_{uuid.uuid4().hex[:8]}"
    register_embedder(name, _broken_ctor)
    try:
        path = tmp_path / "s.json"
        path.write_text(json.dumps(_schema_dict()))
        assert main(["embed", str(path), "--embedder", name]) == 2
        err = capsys.readouterr().err
        assert f"embedder {name!r} from" in err and "embedders" not in err and "ctor broke" in err
    finally:
        unregister_embedder(name)


# --- 4: all-zero semantic embeddings: kept on load, refused by transfer_distance ----------------------
def test_a_zero_embedding_loads_and_transfer_distance_refuses_it(tmp_path):
    # files and checkpoints written before an embedder check existed hold such vectors: they load
    zero = CanvasSchema.from_dict(_schema_dict([0, 0.0, -0.0])).layout.regions["arm"]
    assert zero.semantic_embedding == (0.0, 0.0, 0.0)
    other = RegionSpec((0, 1), semantic_embedding=(0.0, 1.0, 0.0))
    with pytest.raises(SchemaError, match="zero vector"):
        transfer_distance(zero, other)
    tiny = RegionSpec((0, 1), semantic_embedding=(0.0, 1e-300, 0.0))
    assert transfer_distance(tiny, other) == pytest.approx(0.0)
    with pytest.raises(SchemaError, match="finite"):
        RegionSpec((0, 1), semantic_embedding=(0.0, float("nan")))


# --- 5: docs -----------------------------------------------------------------------------------------
def test_docs_say_what_embed_and_plugins_refuse():
    text = (DOCS / "semantic.md").read_text("utf-8")
    embed = text[text.index("## `canvas embed`"):text.index("## Python API")]
    assert "stderr" in embed and "zeros" in embed and "CANVAS_MAX_WIDTH" in embed
    plugins = " ".join((DOCS / "plugins.md").read_text("utf-8").split())
    assert "`--dtype` takes `float32` (the default), `float16`, `bfloat16` or `float64`" in plugins
    assert "all-zero `semantic_embedding` loads as before" in " ".join((DOCS / "migrating.md").read_text("utf-8").split())
