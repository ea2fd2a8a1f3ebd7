"""t17 command-line fixes around embedders and plugins.

``canvas embed`` keeps plugin prints off stdout; an embedder that raises (or recurses without end)
while embedding is one line naming it and its provider (exit 2, the output untouched); all-zero
vectors and vectors over ``CANVAS_MAX_WIDTH`` are refused naming the region, the length read before
anything is converted; ``canvas plugins --dtype`` takes only the dtypes ``canvas compile`` takes;
``-o ''`` is named as an empty path; a name registered twice in-process says how to unregister it.
"""

from __future__ import annotations

import itertools
import json
import uuid

import pytest

from canvas_core.cli import main
from canvas_core.errors import CanvasError, DuplicateRegistrationError, FactoryError, SchemaError, SizeLimitError
from canvas_core.plugins import register_attention, register_embedder, unregister_attention, unregister_embedder
from canvas_core.schema import CanvasLayout, CanvasSchema
from canvas_core.semantic import compute_semantic_embeddings


def _schema() -> CanvasSchema:
    lay = CanvasLayout(T=1, spatial_shape=(2,), d_model=8, regions={"cam": (0, 1, 0, 1), "arm": (0, 1, 1, 2)})
    return CanvasSchema(layout=lay)


@pytest.fixture
def schema_file(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(_schema().to_dict()))
    return path


@pytest.fixture
def embedder():
    """``make(embed)`` registers an embedder (a class whose ``embed`` is ``embed``) under a fresh
    name and returns the name; every one is unregistered afterwards."""
    names = []

    def make(embed, init=None):
        name = f"t17_{uuid.uuid4().hex[:8]}"
        cls = type("T17Embedder", (), {"embed": lambda self, texts: embed(texts),
                                       "__init__": (lambda self: init()) if init else (lambda self: None)})
        register_embedder(name, cls)
        names.append(name)
        return name

    yield make
    for n in names:
        unregister_embedder(n)


def _err_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# --- 1: plugin prints go to stderr ------------------------------------------------------------------
def test_embed_to_stdout_is_only_the_json(schema_file, embedder, capsys):
    def embed(texts):
        print("embedder: embedding!")
        return [[1.0, 2.0] for _ in texts]

    name = embedder(embed, init=lambda: print("embedder: building!"))
    assert main(["embed", str(schema_file), "--embedder", name]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)  # the documented `canvas embed s.json > out.json`
    assert doc["regions"]["cam"]["semantic_embedding"] == [1.0, 2.0]
    assert "embedder: building!" in err and "embedder: embedding!" in err


# --- 2 and 3: an embedder failing while embedding ----------------------------------------------------
def _raises(texts):
    raise RuntimeError("embedder exploded")


def _recurses(texts):
    return _recurses(texts)


@pytest.mark.parametrize("embed, said", [(_raises, "RuntimeError: embedder exploded"),
                                         (_recurses, "RecursionError: maximum recursion depth exceeded")])
def test_embedder_failure_is_one_line_naming_it_and_the_output_is_untouched(
        schema_file, tmp_path, embedder, capsys, embed, said):
    name = embedder(embed)
    out = tmp_path / "out.json"
    out.write_text("keep me")
    assert main(["embed", str(schema_file), "--embedder", name, "-o", str(out)]) == 2
    err = _err_line(capsys)
    assert err.startswith(f"canvas embed: error: embedder {name!r} from <in-process> (")
    assert said in err and "nested too deeply" not in err
    assert out.read_text() == "keep me"


def test_embedder_failure_in_the_library_is_a_factory_error_chained(embedder):
    def embed(texts):
        raise ValueError("bad text")

    name = embedder(embed)
    with pytest.raises(FactoryError, match=rf"embedder {name!r} from .*ValueError: bad text") as info:
        compute_semantic_embeddings(_schema(), embedder=name)
    assert isinstance(info.value, ValueError) and isinstance(info.value.__cause__, ValueError)
    with pytest.raises(FactoryError, match=r"embedder 'gen'.*RuntimeError: in the generator"):
        compute_semantic_embeddings(["a", "b"], _Gen())


class _Gen:
    model_name = "gen"

    def embed(self, texts):
        yield [1.0]
        raise RuntimeError("in the generator")


def test_recursion_outside_canvas_core_is_not_blamed_on_the_file(schema_file, monkeypatch, capsys):
    import canvas_core.semantic as semantic

    def runaway(*args, **kwargs):
        return runaway(*args, **kwargs)

    monkeypatch.setattr(semantic, "embed_schema", runaway)
    assert main(["embed", str(schema_file)]) == 2
    err = _err_line(capsys)
    assert "recursed without end" in err and "in runaway" in err and "nested too deeply" not in err


# --- 4: all-zero vectors ------------------------------------------------------------------------------
def test_all_zero_vectors_are_refused_naming_the_region(schema_file, tmp_path, embedder, capsys):
    name = embedder(lambda texts: [[0.0, 0.0] if t == "arm" else [1.0, 0.0] for t in texts])
    with pytest.raises(SchemaError, match=r"region 'arm'.*all zeros"):
        compute_semantic_embeddings(_schema(), embedder=name)
    out = tmp_path / "out.json"
    assert main(["embed", str(schema_file), "--embedder", name, "-o", str(out)]) == 2
    assert "region 'arm'" in _err_line(capsys) and not out.exists()


def test_the_canvas_engineering_form_keeps_zero_vectors_with_a_warning():
    """compute_semantic_embeddings(field_paths, embed_fn) is canvas-engineering's API, whose own
    tests embed with a mock returning zeros: it keeps them (a warning naming the path), while the
    schema form and `canvas embed` above refuse them."""
    with pytest.warns(UserWarning, match=r"path 'field.a'.*all zeros"):
        out = compute_semantic_embeddings(["field.a", "field.b"], lambda texts: [[0.0] * 4 for _ in texts])
    assert out == {"field.a": (0.0,) * 4, "field.b": (0.0,) * 4}


# --- 5: vector length over CANVAS_MAX_WIDTH, read before converting ----------------------------------
class _HugeRows:
    """Rows that claim a huge size and refuse to be converted (the check must come first)."""

    def __init__(self, shape):
        self.shape = shape

    def __len__(self):
        return self.shape[0]

    def __iter__(self):
        return iter(_HugeRows(self.shape[1:]) for _ in range(self.shape[0]))

    def __getitem__(self, i):
        return _HugeRows(self.shape[1:])

    def tolist(self):
        raise AssertionError("converted before its size was checked")


@pytest.mark.parametrize("rows", [
    lambda texts: _HugeRows((len(texts), 10 ** 9)),  # an array / tensor
    lambda texts: [_HugeRows((10 ** 9,)) for _ in texts],  # a list of arrays
    lambda texts: [[1.0] * 16 for _ in texts],  # lists
    lambda texts: [itertools.repeat(1.0, 10 ** 5) for _ in texts],  # iterators of unknown length
], ids=["array", "rows", "lists", "iterators"])
def test_too_long_vectors_are_refused_before_converting(embedder, monkeypatch, rows):
    monkeypatch.setenv("CANVAS_MAX_WIDTH", "8")
    name = embedder(rows)
    with pytest.raises(SizeLimitError, match=r"region 'cam'.*the vector's length.*CANVAS_MAX_WIDTH"):
        compute_semantic_embeddings(_schema(), embedder=name)


def test_too_long_vectors_on_the_command_line(schema_file, embedder, monkeypatch, capsys):
    monkeypatch.setenv("CANVAS_MAX_WIDTH", "8")
    name = embedder(lambda texts: [[1.0] * 9 for _ in texts])
    assert main(["embed", str(schema_file), "--embedder", name]) == 2
    assert "CANVAS_MAX_WIDTH" in _err_line(capsys) and capsys.readouterr().out == ""
    monkeypatch.setenv("CANVAS_MAX_WIDTH", "9")
    assert main(["embed", str(schema_file), "--embedder", name]) == 0


# --- 6: plugins --dtype -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["int32", "int8", "float8"])
def test_plugins_refuses_dtypes_compile_refuses(dtype, capsys):
    assert main(["plugins", "--dtype", dtype]) == 2
    err = _err_line(capsys)
    assert f"{dtype!r} is not supported; use float32, float16, bfloat16 or float64" in err
    assert capsys.readouterr().out == ""


def test_plugins_takes_a_dtype_alias(capsys):
    assert main(["plugins", "--json", "--dtype", "fp16"]) == 0
    assert json.loads(capsys.readouterr().out)["target"]["dtype"] == "float16"


# --- 7: -o '' -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["schema", "-o", ""], ["schema", "-o", "  "], ["embed", "x.json", "-o", ""]])
def test_an_empty_output_path_is_named_as_such(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "the output path is empty" in err and "directory" not in err
    assert list(tmp_path.iterdir()) == []


# --- 8: the same name registered twice in-process -----------------------------------------------------
def test_an_in_process_duplicate_says_unregister_or_override():
    class Att:
        def __init__(self, **kwargs):
            pass

    name = f"t17_dup_{uuid.uuid4().hex[:6]}"
    register_attention(name, Att)
    try:
        with pytest.raises(DuplicateRegistrationError) as info:
            register_attention(name, Att)
        msg = str(info.value)
        assert f"unregister_attention({name!r})" in msg and "override=True" in msg
        assert "CANVAS_BLOCK_PLUGINS" not in msg and "uninstall" not in msg
    finally:
        unregister_attention(name)
    with pytest.raises(DuplicateRegistrationError, match=r"canvas-core's own: register yours under another "
                                                         r"name, or pass override=True") as info:
        register_attention("self_attention", Att)
    assert "CANVAS_BLOCK_PLUGINS" not in str(info.value)
    assert isinstance(info.value, CanvasError)
