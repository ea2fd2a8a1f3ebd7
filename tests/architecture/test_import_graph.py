"""The import graph keeps the layers of DESIGN.md ("Layers inside canvas_core/", "Import rules").

Every source file is read with ``ast`` (nothing is imported) and every import is collected, at
module level and inside functions and methods: ``import a.b``, ``from a import b`` (relative
ones resolved), ``importlib.import_module("a.b")`` / ``__import__("a.b")`` with a literal name,
and lazy tables (``canvas_core._lazy``; see :func:`lazy_table`), so ``from canvas_core import
SpatiotemporalCanvas`` imports ``canvas_core.runtime.canvas``. ``if TYPE_CHECKING:`` is left out.

The checks:

* the floors -- ``schema`` (1), ``program`` (2), ``plugins`` (3), ``compiler`` (4) -- import
  nothing above their own layer (``canvas_core`` itself, ``canvas_core.errors`` and the rest of
  ``BASE`` are layer 0; everything else in ``canvas_core`` is above the floors), and never torch or another
  torch-world package, not even inside a function. The only exceptions are the thin delegates of
  ``ALLOWED_UPWARD``, the one allow-list, each with its reason; a stale entry fails too;
* the core imports no plugin distribution (``canvas_plugin_*`` / ``canvas_backend_*``) and names
  none of their modules in a string: plugins are reached through the registries only;
* a bundled plugin or backend (its package and its tests) imports only the published surface
  (``PUBLISHED``, as defined in the docstring of :mod:`canvas_core.extend`), never a private module;
* no import cycle among core modules at module level;
* no source file of ``canvas_core``, ``plugins``, ``backends``, ``tests``, ``benchmarks``, ``examples``
  or ``scripts`` has more than 500 lines;
* ``import canvas_core`` and the four floor packages leave torch unimported.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Set, Tuple

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "canvas_core"

#: layer of each floor package (DESIGN.md)
FLOORS: Dict[str, int] = {
    "canvas_core.schema": 1,
    "canvas_core.program": 2,
    "canvas_core.plugins": 3,
    "canvas_core.compiler": 4,
}
#: layer 0, leaves shared by every layer: the facade (lazy names through its table), the errors, the
#: device / dtype names, the repr texts, the alias finder of old module paths, the atomic file writer, the lazy-export helper
BASE = {"canvas_core", "canvas_core.errors", "canvas_core.devices", "canvas_core._reprs", "canvas_core._compat",
        "canvas_core._safe_write", "canvas_core._lazy"}
ABOVE = 5  # runtime, looping, attention, identity, semantic, extend, testing, demo, commands, cli, ...

#: packages the floors must not import, even inside a function: torch and what needs it
TORCH_WORLD = ("torch", "safetensors.torch", "diffusers", "transformers", "timm", "mamba_ssm",
               "xformers", "triton", "sentence_transformers", "fla")

#: (module, function, imported module) -> why this upward import out of a floor is allowed
ALLOWED_UPWARD: Dict[Tuple[str, str, str], str] = {
    ("canvas_core.schema.layout", "CanvasLayout.loss_weight_mask", "canvas_core.runtime.delegates"):
        "canvas-engineering's CanvasLayout.loss_weight_mask returns a torch tensor",
    ("canvas_core.schema.topology", "CanvasTopology.to_attention_mask", "canvas_core.runtime.delegates"):
        "canvas-engineering's CanvasTopology.to_attention_mask returns a dense torch mask",
    ("canvas_core.schema.topology", "CanvasTopology.to_additive_mask", "canvas_core.runtime.delegates"):
        "canvas-engineering's CanvasTopology.to_additive_mask returns a torch tensor",
    ("canvas_core.schema.topology", "CanvasTopology.to_block_mask", "canvas_core.compiler.masks"):
        "the block structure comes from lowering the topology (numpy), which the compiler (layer 4) does",
    ("canvas_core.program.bound", "BoundSchema.build_canvas", "canvas_core.runtime.delegates"):
        "canvas-engineering's BoundSchema.build_canvas returns a SpatiotemporalCanvas (nn.Module)",
    ("canvas_core.program.bound", "BoundSchema.build_semantic_conditioner", "canvas_core.runtime.delegates"):
        "canvas-engineering's BoundSchema.build_semantic_conditioner returns an nn.Module",
    # the compiler's delegates into the runtime (this is the one list of them)
    ("canvas_core.compiler.compiler", "_mode_applier", "canvas_core.runtime.modes"):
        "ProgramCompiler.compile(module=...) (canvas-engineering's signature) changes the nn.Module it is given",
    ("canvas_core.compiler.plan", "ExecutionPlan.to_dense", "canvas_core.runtime.plan_tensors"):
        "ExecutionPlan.to_dense returns the plan's weights as a torch tensor",
}
#: statements (docstring aside) a delegate may have: an allowed function forwards, it does no work
DELEGATE_MAX_STATEMENTS = 5

#: what a plugin may import from the core (see canvas_core.extend); every other module is private
PUBLISHED = {
    "canvas_core", "canvas_core.extend", "canvas_core.errors", "canvas_core.testing",
    "canvas_core.schema", "canvas_core.program", "canvas_core.plugins", "canvas_core.compiler",
    "canvas_core.looping", "canvas_core.identity", "canvas_core.semantic", "canvas_core.schema.masks",
}
PLUGIN_DIST = re.compile(r"^canvas_(plugin|backend)_[A-Za-z0-9_]+")
MAX_LINES = 500


class Edge(NamedTuple):
    source: str  # importing module (or file, for plugin tests)
    target: str  # imported module; for core targets the module that defines the name
    path: str
    line: int
    scope: str  # qualified name of the enclosing function/class, "" at module level
    module_level: bool  # runs when the importing module is imported
    lazy: bool  # found through a lazy (PEP 562) table, not written as an import


def _module_name(path: Path, root: Path) -> Tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return ".".join(parts), is_pkg


def _core_modules() -> Dict[str, Path]:
    out = {}
    for path in CORE.rglob("*.py"):
        name, _ = _module_name(path, ROOT)
        out[name] = path
    return out


MODULES = _core_modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _defines_getattr(node: ast.stmt) -> bool:  # def __getattr__, or __getattr__, __dir__ = lazy_exports(...)
    targets = [t for g in getattr(node, "targets", ()) for t in (g.elts if isinstance(g, ast.Tuple) else [g])]
    return getattr(node, "name", None) == "__getattr__" or any(getattr(t, "id", "") == "__getattr__" for t in targets)


def lazy_table(tree: ast.Module, modules: Iterable[str]) -> Dict[str, str]:
    """``name -> module`` of a module with a PEP 562 ``__getattr__`` (empty otherwise): module-level
    dicts (also one passed to ``lazy_exports``) of ``"module"`` / ``"module:attr"``, ``_export(...)``."""
    known = set(modules)
    if not any(_defines_getattr(n) for n in tree.body):
        return {}
    table: Dict[str, str] = {}

    def read_dict(value: ast.Dict) -> None:
        for k, v in zip(value.keys, value.values):
            target = str(getattr(v, "value", "")).partition(":")[0]
            if isinstance(k, ast.Constant) and isinstance(v, ast.Constant) and target in known:
                table[str(k.value)] = target

    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign, ast.Expr)) else None
        if isinstance(value, ast.Dict):
            read_dict(value)
        elif isinstance(value, ast.Call) and value.args:
            [read_dict(arg) for arg in value.args if isinstance(arg, ast.Dict)]
            consts = [a.value for a in value.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if len(consts) == len(value.args) and consts[0] in known:
                for name in consts[1:]:
                    table[name] = consts[0]
    return table


class _Collector(ast.NodeVisitor):
    def __init__(self, source: str, is_pkg: bool, path: str, modules: Set[str],
                 lazy: Dict[str, Dict[str, str]]) -> None:
        self.source, self.path, self.modules, self.lazy = source, path, modules, lazy
        self.package = source if is_pkg else source.rpartition(".")[0]
        self.scope: List[str] = []
        self.depth = 0  # enclosing functions
        self.edges: List[Edge] = []

    def _add(self, target: str, node: ast.AST, lazy: bool = False) -> None:
        # ``target`` is what the statement imports, exactly: a core path with no source file (one
        # of canvas-engineering's alias paths, made by canvas_core._compat) counts as above the floors
        self.edges.append(Edge(self.source, target, self.path, node.lineno, ".".join(self.scope),
                               self.depth == 0, lazy))

    def _scoped(self, node: ast.AST, is_function: bool) -> None:
        self.scope.append(node.name)
        self.depth += is_function
        self.generic_visit(node)
        self.depth -= is_function
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._scoped(node, True)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._scoped(node, False)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")[: len(self.package.split(".")) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        for alias in node.names:
            full = f"{module}.{alias.name}"
            if full in self.modules:
                self._add(full, node)
                continue
            self._add(module, node)
            target = self.lazy.get(module, {}).get(alias.name)
            if target:
                self._add(target, node, lazy=True)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in ("import_module", "__import__") and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                self._add(arg.value, node)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:  # `import canvas_core; canvas_core.X`
        if isinstance(node.value, ast.Name) and node.value.id == "canvas_core":
            target = self.lazy.get("canvas_core", {}).get(node.attr)
            if target:
                self._add(target, node, lazy=True)
        self.generic_visit(node)


def collect(source_text: str, module: str, is_pkg: bool = False, path: str = "<string>",
            modules: Optional[Set[str]] = None, lazy: Optional[Dict[str, Dict[str, str]]] = None) -> List[Edge]:
    """Every import of one source file, as edges (see the module docstring)."""
    modules = set(MODULES) if modules is None else modules
    lazy = LAZY if lazy is None else lazy
    tree = ast.parse(source_text)
    col = _Collector(module, is_pkg, path, modules, lazy)
    col.visit(tree)
    own = lazy.get(module, {})
    for name, target in sorted(own.items()):  # a lazy table imports its modules on attribute access
        col.edges.append(Edge(module, target, path, 1, "__getattr__", False, True))
    return col.edges


LAZY = {name: t for name, p in MODULES.items() if (t := lazy_table(ast.parse(p.read_text()), MODULES))}


def _core_edges() -> List[Edge]:
    edges = []
    for name, path in sorted(MODULES.items()):
        edges += collect(path.read_text(), name, path.name == "__init__.py", str(path.relative_to(ROOT)))
    return edges


CORE_EDGES = _core_edges()


def _plugin_files() -> List[Path]:
    return sorted(p for base in ("plugins", "backends") for p in (ROOT / base).glob("*/**/*.py")
                  if not _generated(p))


def _generated(path: Path) -> bool:
    return any(part in ("build", "dist", ".venv") or part.endswith(".egg-info") for part in path.parts)


def layer_of(module: str) -> int:
    if module in BASE:
        return 0
    for pkg, n in FLOORS.items():
        if module == pkg or module.startswith(pkg + "."):
            return n
    return ABOVE if module.startswith("canvas_core") else -1


def _where(e: Edge) -> str:
    return f"{e.path}:{e.line} ({e.scope or 'module level'}{', lazy' if e.lazy else ''}) imports {e.target}"


def _is_torch_world(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in TORCH_WORLD)


# ------------------------------------------------------------------------- the walker itself
def test_the_walker_sees_function_level_relative_lazy_and_dynamic_imports():
    mods = {"canvas_core", "canvas_core.schema", "canvas_core.schema.topology", "canvas_core.runtime",
            "canvas_core.runtime.canvas", "canvas_core.errors"}
    lazy = {"canvas_core": {"SpatiotemporalCanvas": "canvas_core.runtime.canvas"}}
    src = textwrap.dedent('''
        from typing import TYPE_CHECKING
        from . import topology
        from ..errors import CanvasError
        if TYPE_CHECKING:
            import torch
        class A:
            def f(self):
                import torch.nn
                from canvas_core import SpatiotemporalCanvas
                return importlib.import_module("canvas_core.runtime.canvas")
        def g():
            import canvas_core
            return canvas_core.SpatiotemporalCanvas
    ''')
    edges = collect(src, "canvas_core.schema", is_pkg=True, modules=mods, lazy=lazy)
    seen = {(e.target, e.scope, e.module_level, e.lazy) for e in edges}
    assert ("canvas_core.schema.topology", "", True, False) in seen
    assert ("canvas_core.errors", "", True, False) in seen
    assert ("torch.nn", "A.f", False, False) in seen
    assert ("canvas_core.runtime.canvas", "A.f", False, True) in seen  # through the lazy table
    assert ("canvas_core.runtime.canvas", "A.f", False, False) in seen  # import_module("...")
    assert ("canvas_core.runtime.canvas", "g", False, True) in seen  # canvas_core.X attribute
    assert not any(e.target == "torch" for e in edges)  # TYPE_CHECKING imports never run
    alias = collect("from canvas_core.masks import Rect", "canvas_core.schema.x", modules=mods, lazy=lazy)
    assert [e.target for e in alias] == ["canvas_core.masks"] and layer_of("canvas_core.masks") == ABOVE


def test_the_walker_reads_lazy_tables():
    tree = ast.parse(textwrap.dedent('''
        _LAZY = {"CanvasLayout": "canvas_core.schema", "nothing": "not.a.module"}
        _export("canvas_core.runtime.canvas", "SpatiotemporalCanvas", "PeriodEmbedding")
        def __getattr__(name): ...
    '''))
    table = lazy_table(tree, {"canvas_core.schema", "canvas_core.runtime.canvas"})
    assert table == {"CanvasLayout": "canvas_core.schema", "SpatiotemporalCanvas": "canvas_core.runtime.canvas",
                     "PeriodEmbedding": "canvas_core.runtime.canvas"}
    assert lazy_table(ast.parse("_LAZY = {'A': 'canvas_core.schema'}"), {"canvas_core.schema"}) == {}
    helper = "__getattr__, __dir__ = lazy_exports(__name__, {'A': 'canvas_core.schema', 'b': 'x.y:z', 'c': f})"
    assert lazy_table(ast.parse(helper), {"canvas_core.schema", "x.y"}) == {"A": "canvas_core.schema", "b": "x.y"}
    assert LAZY["canvas_core"]["SpatiotemporalCanvas"] == "canvas_core.runtime.canvas"


# ------------------------------------------------------------------------- floors
def test_floors_import_nothing_above_their_layer():
    bad = []
    for e in CORE_EDGES:
        src_layer = layer_of(e.source)
        if not 1 <= src_layer <= 4 or not e.target.startswith("canvas_core"):
            continue
        if layer_of(e.target) > src_layer and (e.source, e.scope, e.target) not in ALLOWED_UPWARD:
            bad.append(_where(e))
    assert not bad, "upward imports out of schema/program/plugins/compiler:\n" + "\n".join(sorted(set(bad)))


def test_layer_zero_is_a_leaf():
    bad = sorted({_where(e) for e in CORE_EDGES if e.source in BASE and not e.lazy
                  and (_is_torch_world(e.target) or (e.target.startswith("canvas_core") and e.target not in BASE))})
    assert not bad, f"layer 0 ({sorted(BASE)}) imports only layer 0 and no torch:\n" + "\n".join(bad)


def test_floors_never_import_torch():
    bad = sorted({_where(e) for e in CORE_EDGES if 1 <= layer_of(e.source) <= 4 and _is_torch_world(e.target)})
    assert not bad, "torch-world imports in schema/program/plugins/compiler:\n" + "\n".join(bad)


def test_allowed_upward_imports_are_exact_and_thin():
    found = {(e.source, e.scope, e.target) for e in CORE_EDGES}
    stale = sorted(k for k in ALLOWED_UPWARD if k not in found)
    assert not stale, f"allow-list entries that match no import (remove them): {stale}"
    for module, qualname, _target in ALLOWED_UPWARD:
        tree = ast.parse(MODULES[module].read_text())
        node: ast.AST = tree
        for part in qualname.split("."):
            node = next(n for n in ast.iter_child_nodes(node)
                        if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == part)
        body = node.body[1:] if ast.get_docstring(node) else node.body
        assert len(body) <= DELEGATE_MAX_STATEMENTS, f"{module}.{qualname} is not a thin delegate"
        assert not any(isinstance(n, (ast.For, ast.While, ast.With, ast.Try)) for n in ast.walk(node)), (
            f"{module}.{qualname} does work; move it into {_target}")


def test_import_of_the_floors_leaves_torch_unimported():
    code = ("import sys, canvas_core, canvas_core.schema, canvas_core.program, canvas_core.compiler, "
            "canvas_core.plugins, canvas_core.extend\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'timm'))\n"
            "assert not heavy, heavy\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]


# ------------------------------------------------------------------------- plugins
def test_core_never_imports_a_plugin_distribution():
    bad = [_where(e) for e in CORE_EDGES if PLUGIN_DIST.match(e.target)]
    for path in MODULES.values():  # nor names one of their modules for importlib
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr)}
        for n in ast.walk(tree):
            if (isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
                    and re.fullmatch(r"canvas_(plugin|backend)_\w+(\.\w+)*(:[\w.]+)?", n.value)):
                bad.append(f"{path.relative_to(ROOT)}:{n.lineno} names the plugin module {n.value!r}")
    assert not bad, "the core reaches plugins through the registries only:\n" + "\n".join(sorted(set(bad)))


def _is_private(module: str) -> bool:
    return module not in PUBLISHED or any(part.startswith("_") for part in module.split("."))


def test_plugins_import_only_the_published_surface():
    files = _plugin_files()
    assert len(files) > 20  # the bundled plugins and backends are there to check
    bad = []
    for path in files:
        rel = str(path.relative_to(ROOT))
        for e in collect(path.read_text(), rel, path.name == "__init__.py", rel, lazy={}):
            if e.target.startswith("canvas_core") and _is_private(e.target):
                bad.append(_where(e))
    assert not bad, ("plugins import canvas_core, canvas_core.extend and the public API only "
                     f"({sorted(PUBLISHED)}):\n" + "\n".join(sorted(set(bad))))


def test_private_means_underscore_or_unpublished():
    assert _is_private("canvas_core.attention._base") and _is_private("canvas_core.looping.adapter")
    assert _is_private("canvas_core.runtime.kernels") and _is_private("canvas_core._compat")
    assert not _is_private("canvas_core.extend") and not _is_private("canvas_core")


def test_every_published_extension_name_resolves():
    code = ("import sys, canvas_core.extend as x\n"
            "assert 'torch' not in sys.modules\n"
            "assert set(x.__all__) == set(x._SOURCES) | {'hookimpl', 'hookspec', 'ENTRY_POINT_GROUP'}\n"
            "missing = [n for n in x.__all__ if getattr(x, n, None) is None]\n"
            "assert not missing, missing\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]


# ------------------------------------------------------------------------- shape of the graph
def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1 or node in graph.get(node, ()):
                    out.append(sorted(comp))
    return out


def test_the_cycle_finder():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_core_modules():
    # none at module level; counting imports inside functions, only ALLOWED_UPWARD's delegates may close one
    for module_level in (True, False):
        graph: Dict[str, Set[str]] = {m: set() for m in MODULES}
        for e in CORE_EDGES:
            if (e.module_level or not module_level) and not e.lazy and e.target in MODULES and e.target != e.source \
                    and (e.source, e.scope, e.target) not in ALLOWED_UPWARD:
                graph[e.source].add(e.target)
                parts = e.target.split(".")  # importing a.b.c runs a.b's __init__ first (unless inside a.b)
                for i in range(2, len(parts)):
                    parent = ".".join(parts[:i])
                    if parent in MODULES and not (e.source + ".").startswith(parent + "."):
                        graph[e.source].add(parent)
        cycles = _cycles(graph)
        where = "module-level" if module_level else "module- and function-level"
        assert not cycles, f"{where} import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_source_file_over_500_lines():
    files = [p for p in CORE.rglob("*.py")] + _plugin_files()
    files += [p for d in ("tests", "benchmarks", "examples", "scripts") for p in (ROOT / d).rglob("*.py")]
    long = sorted(f"{p.relative_to(ROOT)}: {n} lines" for p in files
                  if (n := len(p.read_text().splitlines())) > MAX_LINES)
    assert not long, f"source files over {MAX_LINES} lines:\n" + "\n".join(long)
