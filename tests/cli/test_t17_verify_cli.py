"""``canvas verify`` with plugins that print, raise or return NaN while they are probed.

* what a plugin prints (at build, in forward) goes to stderr: ``--json``'s output stays one JSON
  document, the text report is all of stdout;
* a type that raises while probed is one line naming it and its connection, exit 2 (not 1, which
  means "undeclared read");
* a kernel the compiler picks that returns NaN is named as such, exit 2, instead of a report of
  undeclared reads;
* ``--as-built`` probes the reference kernel as the layers built it: the same report.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import canvas_core.plugins as P
import canvas_core.runtime.verify as verify_mod
from canvas_core.cli import main
from canvas_core.extend import AttentionKernel
from canvas_core.plugins import PluginHost, use_host
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection

torch.set_num_threads(1)


class _Mean(nn.Module):
    """A sound type: each query reads the mean of its keys."""

    armed = False

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        print("t17 type: building")
        self.lin = nn.Linear(d_model, d_model)

    def forward(self, q, k, v):
        print("t17 type: forward", tuple(q.shape))
        if type(self).armed:
            raise ValueError("plugin blew up")
        return self.lin(v.mean(1, keepdim=True).expand(-1, q.shape[1], -1))


class _NaNs(AttentionKernel):
    def forward(self, q, k, v, *, scale=None, dropout_p=0.0):
        return v * float("nan")


@pytest.fixture
def host():
    _Mean.armed = False
    with use_host(PluginHost(entry_points=lambda: [])):
        yield
    _Mean.armed = False


def _file(tmp_path, fn: str = "t17_mean"):
    lay = CanvasLayout(T=2, spatial_shape=(5,), d_model=8, regions={"a": (0, 2, 0, 2), "b": (0, 2, 2, 4),
                                                                     "c": (0, 2, 4, 5)})
    topo = CanvasTopology(connections=[Connection("a", "b"), Connection("b", "a", t_dst=-1),
                                       Connection("c", "a", fn=fn)])
    path = tmp_path / "s.json"
    path.write_text(json.dumps(CanvasSchema(layout=lay, topology=topo).to_dict()))
    return str(path)


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_plugin_prints_go_to_stderr_json_and_text(host, tmp_path, capsys):
    P.register_attention("t17_mean", _Mean)
    path = _file(tmp_path)
    assert main(["verify", path, "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["ok"] is True  # one JSON document
    assert "t17 type: building" in err and "t17 type: forward" in err
    assert main(["verify", path]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("verified ") and "t17 type" not in out and "t17 type: forward" in err


def test_a_type_raising_while_probed_is_one_line_exit_2(host, tmp_path, capsys, monkeypatch):
    P.register_attention("t17_mean", _Mean)
    probing = verify_mod._probing

    def armed(model):  # the type is sound while built, raises once the probe starts
        _Mean.armed = True
        return probing(model)

    monkeypatch.setattr(verify_mod, "_probing", armed)
    assert main(["verify", _file(tmp_path), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    line = _one_line("".join(x for x in err.splitlines(True) if not x.startswith("t17 type")))  # the type's prints aside
    assert line.startswith("canvas verify: error: ") and "fn type 't17_mean'" in line, line
    assert "'c' -> 'a'" in line and "ValueError" in line and "plugin blew up" in line


def test_a_picked_kernel_returning_nan_is_named_exit_2(host, tmp_path, capsys):
    P.register_kernel("t17_nan_k", _NaNs, supports=("cross_attention",), priority=1000)
    assert main(["verify", _file(tmp_path, fn="pooling"), "--json"]) == 2
    out, err = capsys.readouterr()
    line = _one_line(err)
    assert out == "" and "NaN or infinite values" in line and "'cross_attention'" in line, line
    assert "t17_nan_k" in line and "undeclared" not in line


def test_as_built_gives_the_same_report(tmp_path, capsys, monkeypatch):
    import canvas_core.runtime.verify_guard as guard

    monkeypatch.setattr(guard, "LEAN_FROM", 0)
    path = _file(tmp_path, fn="pooling")
    assert main(["verify", path, "--json"]) == 0
    lean = capsys.readouterr().out
    assert main(["verify", path, "--json", "--as-built"]) == 0
    assert capsys.readouterr().out == lean
