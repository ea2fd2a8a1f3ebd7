"""``canvas plugins [--json]``: installed plugins, what they register, failures, availability.

Lists every plugin (the builtin one included) with its distribution, version, hooks, the names it
registered per registry and its status (``ok`` / ``failed`` with the error / ``blocked`` /
``disabled``), then the contents of every registry with availability on the target device
(``--device``, default: ``cuda`` when torch sees one, else ``cpu``) and the reasons when not.
A lazy factory string whose module cannot be found (``importlib.util.find_spec``, nothing
imported) is marked BROKEN; a plugin name refused because a builtin has it is shown as a CLASH.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List

from canvas_core.commands._output import plugin_output_to_stderr


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--device", default="auto",
                        help="device availability is checked for: cpu, cuda, mps or auto (default)")
    parser.add_argument("--dtype", default="float32",
                        help="dtype availability is checked for: float32 (default), float16, bfloat16 or float64")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when a plugin failed to load, two plugins conflict (a builtin "
                             "name included), a plugin has a misspelt hook, or a lazy factory module is missing")


def _auto_device() -> str:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "cpu"
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:
        return "cpu"


def collect(device: str = "cpu", dtype: str = "float32") -> Dict[str, Any]:
    """The document printed by ``canvas plugins --json``: every part read from one snapshot of the
    default host (records, registries, settings of one moment), so they cannot disagree."""
    from canvas_core.plugins import RuntimeContext, get_host

    host = get_host()
    ctx = RuntimeContext(device=device, dtype=dtype)
    snap = host.snapshot()
    plugins = host.plugin_report(snap)
    conflicts = {kind: c for kind, st in snap.states.items() if (c := st.conflicts())}
    shadowed = {kind: s for kind, st in snap.states.items() if (s := st.shadowed())}
    return {
        "environment": {
            "autoload": snap.settings.get("autoload", True),
            "allow": snap.settings.get("allow"),
            "block": snap.settings.get("block", []),
        },
        "target": {"device": ctx.device_type, "dtype": ctx.dtype_name},
        "plugins": plugins,
        "failures": [{k: p[k] for k in ("name", "distribution", "version", "error")}
                     for p in plugins if p["status"] == "failed"],
        "conflicts": conflicts,
        # builtin names a plugin also registered (refused, the builtin kept): name -> messages
        "shadowed": shadowed,
        "registries": host.registry_report(ctx, snap),
    }


def _text(doc: Dict[str, Any]) -> str:
    out: List[str] = []
    env = doc["environment"]
    out.append(f"canvas plugins ({len(doc['plugins'])}); autoload {'on' if env['autoload'] else 'off'}"
               + (f", allow-list {','.join(env['allow'])}" if env["allow"] else "")
               + (f", block-list {','.join(env['block'])}" if env["block"] else ""))
    for p in doc["plugins"]:
        ver = f" {p['version']}" if p["version"] else ""
        ep = f" [{p['entry_point']}]" if p.get("entry_point") else ""
        out.append(f"  {p['name']}: {p['distribution']}{ver} ({p['source']}){ep} - {p['status'].upper()}")
        if p["error"]:
            out.append(f"      error: {p['error']}")
        if p["hooks"]:
            out.append(f"      hooks: {', '.join(p['hooks'])}")
        for kind, names in p["registered"].items():
            out.append(f"      {kind}: {', '.join(names)}")
        for kind, names in (p.get("discarded") or {}).items():
            out.append(f"      {kind} (discarded, plugin failed): {', '.join(names)}")
        for c in p["conflicts"]:
            out.append(f"      conflict: {c}")
        for w in p["warnings"]:
            out.append(f"      warning: {w}")
    if doc["failures"]:
        out.append("")
        out.append(f"{len(doc['failures'])} plugin(s) failed to load; names they provide raise "
                   "PluginLoadError when used:")
        for f in doc["failures"]:
            out.append(f"  {f['name']} ({f['distribution']} {f['version']}): {f['error']}")
    t = doc["target"]
    out.append("")
    out.append(f"registries (availability on {t['device']}/{t['dtype']}):")
    for kind, rows in doc["registries"].items():
        out.append(f"  {kind} ({len(rows)}):")
        if not rows:
            out.append("      (empty)")
        width = max((len(r["name"]) for r in rows), default=0)
        for r in rows:
            fam = " ".join(x for x in (r.get("family"), r.get("complexity")) if x)
            extra = f" supports {','.join(r['supports'])} prio {r['priority']}" if kind == "kernels" else ""
            state = ("available" if r["available"] else ("BROKEN: " if r.get("broken") else "UNAVAILABLE: ")
                     + "; ".join(r["reasons"]))
            ver = f" {r['version']}" if r["version"] else ""
            out.append(f"    {r['name']:<{width}}  {r['provider']}{ver}"
                       + (f"  [{fam}]" if fam else "") + extra + f"  - {state}")
            for msg in r.get("shadowed", ()):
                out.append(f"      CLASH with a builtin (refused, builtin kept): {msg}")
    from canvas_core.cli import printable

    def lines(line: str) -> List[str]:
        """A line of the listing: a plugin's multi-line error or warning as several lines, the
        continuation lines indented under it."""
        first, *rest = line.split("\n")
        indent = " " * (len(line) - len(line.lstrip(" ")) + 4)
        return [printable(first, keep="")] + [indent + printable(r, keep="") for r in rest]

    # names, errors and warnings come from plugins: their control characters are shown escaped
    return "\n".join(x for line in out for x in lines(line))


def run(args: argparse.Namespace) -> int:
    from canvas_core.compiler.passes import dtype_name
    from canvas_core.plugins import get_host

    # the dtypes `canvas compile` takes, refused the same way (an integer dtype lists nothing
    # that could run on it); checked before the plugins load
    dtype = dtype_name(getattr(args, "dtype", "float32") or "float32")
    # load the plugins before anything imports torch, so that a plugin importing torch (or
    # another heavy package) while registering is noticed and reported as a warning; what a
    # plugin prints meanwhile (importing, or in a kernel's availability check while the document is
    # collected) goes to stderr, so that --json's document stays one JSON value
    with plugin_output_to_stderr():
        get_host().ensure_loaded()
        device = getattr(args, "device", "auto") or "auto"
        if device == "auto":
            device = _auto_device()
        doc = collect(device=device, dtype=dtype)
    if getattr(args, "json", False):
        json.dump(doc, sys.stdout, indent=2, sort_keys=False, default=str)
        sys.stdout.write("\n")
    else:
        print(_text(doc))
    if getattr(args, "strict", False):
        problems = strict_problems(doc)
        from canvas_core.cli import printable

        for line in problems:  # on stderr, so that --json's document stays one JSON value
            print(f"canvas plugins --strict: {printable(line, keep='')}", file=sys.stderr)
        return 1 if problems else 0
    return 0


def strict_problems(doc: Dict[str, Any]) -> List[str]:
    """What makes ``--strict`` fail, one line each: a plugin that failed to load, a name two
    providers registered (a builtin's included), a misspelt hook, a lazy factory that is missing."""
    out = []
    for p in doc["plugins"]:
        who = f"plugin {p['name']!r} ({p['distribution']})"
        if p["status"] == "failed":
            out.append(f"{who} failed to load: {p['error']}")
        out += [f"{who}: {clash}" for clash in p["conflicts"]]
        out += [f"{who}: {w}" for w in p["warnings"] if w.startswith("misspelt hook")]
    for kind, rows in doc["registries"].items():
        out += [f"{kind} {r['name']!r} ({r['provider']}) is broken: {'; '.join(r['reasons'])}"
                for r in rows if r.get("broken")]
    return out


if __name__ == "__main__":  # python -m canvas_core.commands.plugins
    parser = argparse.ArgumentParser(prog="canvas plugins")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
