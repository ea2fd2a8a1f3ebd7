"""What loading installed plugins needs besides pluggy: the environment controls (the table of
docs/plugins.md; ``PluginHost`` arguments win over them, names compare after
:func:`~canvas_core.plugins.hints.normalize_dist`), the entry points of group ``canvas``, the
record kept per plugin and the slow-import watchdog."""

from __future__ import annotations

import importlib.metadata
import math
import sys
import threading
import time
import traceback
import warnings
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Set, Tuple

from canvas_core.errors import PluginSettingError, SettingError, closest
from canvas_core.plugins.hints import normalize_dist
from canvas_core.plugins.hookspecs import ENTRY_POINT_GROUP

ENV_DISABLE = "CANVAS_DISABLE_PLUGIN_AUTOLOAD"
ENV_ALLOW = "CANVAS_PLUGINS"
ENV_BLOCK = "CANVAS_BLOCK_PLUGINS"
STATUS_OK, STATUS_FAILED, STATUS_BLOCKED, STATUS_DISABLED = "ok", "failed", "blocked", "disabled"
#: packages a plugin should not import merely to register (it names lazy factories instead).
HEAVY_MODULES = ("torch", "diffusers", "timm", "mamba_ssm", "transformers", "xformers", "triton")


def env_flag(env: Mapping[str, str], var: str, error: type = SettingError) -> bool:
    raw = env.get(var)
    word = str(raw or "").strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("", "0", "false", "no", "off"):
        return False
    raise error(
        f"environment variable {var}={raw!r} is not a boolean; set it to 1 (or true/yes/on) to enable "
        "it, or 0 / unset it to disable it")


def name_list(value: Any) -> Optional[List[str]]:
    """``"a, b;c"`` or ``["a", "b"]`` -> normalised names; nothing -> None."""
    if value is None:
        return None
    items = value.replace(";", ",").split(",") if isinstance(value, str) else list(value)
    return [normalize_dist(x.strip()) for x in items if str(x).strip()] or None


def read_settings(env: Mapping[str, str], *, autoload: Optional[bool] = None,
                  allow: Optional[Iterable[str]] = None, block: Optional[Iterable[str]] = None) -> Dict[str, Any]:
    """The controls of one load: ``autoload``, ``allow`` (None: every plugin is allowed), ``block``."""
    return {"autoload": (not env_flag(env, ENV_DISABLE, PluginSettingError)) if autoload is None else bool(autoload),
            "allow": name_list(env.get(ENV_ALLOW) if allow is None else allow),
            "block": name_list(env.get(ENV_BLOCK) if block is None else block) or []}


def warn_unknown_names(settings: Mapping[str, Any], installed: Iterable[str]) -> None:
    """Warn when the allow- or block-list names no installed plugin (a typo, most likely)."""
    known = {n for n in installed if n}
    for var, names in ((ENV_ALLOW, settings["allow"]), (ENV_BLOCK, settings["block"])):
        if unknown := [n for n in (names or []) if n not in known]:
            hint = "".join(f" ({n!r}: did you mean {c!r}?)" for n in unknown if (c := closest(n, known)))
            # blamed on the variable itself, so the warning shows no source line of ours
            warnings.warn_explicit(
                f"{var} names {', '.join(repr(n) for n in unknown)}, which is no installed canvas "
                f"plugin{hint}. Installed: {', '.join(sorted(known)) or 'none'}",
                UserWarning, filename=f"${var}", lineno=0, module="canvas_core.plugins")


def entry_point_distribution(ep: Any) -> Tuple[Optional[str], str]:
    """``(distribution name or None, version or "")`` of the package that declares ``ep``."""
    dist = getattr(ep, "dist", None)  # Distribution.name and .version read its metadata (Python >= 3.10)
    try:
        return getattr(dist, "name", None), str(getattr(dist, "version", "") or "")
    except Exception:  # metadata that cannot be read
        return None, ""


def entry_point_ids(ep: Any) -> Set[str]:
    """The normalised names an allow- or block-list may use for ``ep`` (its own, its package's)."""
    return {normalize_dist(ep.name), normalize_dist(entry_point_distribution(ep)[0] or "")} - {""}


def _dist_label(dist: Any) -> str:
    """A name for an installed distribution whose metadata may be unreadable (messages only)."""
    with suppress(Exception):
        return f"{dist.metadata['Name']} ({getattr(dist, '_path', '?')})"
    return str(getattr(dist, "_path", dist))


def installed_entry_points() -> List[Any]:
    """The installed entry points of group ``canvas``, as ``importlib.metadata.entry_points``
    finds them (the first of the distributions of one name on ``sys.path``), read one
    distribution at a time: one whose ``entry_points.txt`` cannot be parsed, which makes
    ``entry_points()`` itself raise, is skipped (with a warning naming it when its file declares
    the ``canvas`` group) instead of keeping every other plugin from loading."""
    out: List[Any] = []
    seen: Set[str] = set()
    for dist in importlib.metadata.distributions():
        try:
            key = getattr(dist, "_normalized_name", None) or normalize_dist(dist.metadata["Name"] or "")
        except Exception:
            key = None
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        try:
            out.extend(ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP)
        except Exception as exc:  # malformed entry_points.txt: a bare error of importlib.metadata
            text = ""
            with suppress(Exception):
                text = dist.read_text("entry_points.txt") or ""
            if f"[{ENTRY_POINT_GROUP}]" in text:
                warnings.warn_explicit(
                    f"the installed distribution {_dist_label(dist)} declares canvas plugins, but its "
                    f"entry_points.txt cannot be read ({type(exc).__name__}: {exc}); none of its plugins "
                    "is loaded. Reinstall it (pip install --force-reinstall <distribution>) or fix the "
                    "entry points in its packaging metadata", UserWarning,
                    filename="<canvas plugins>", lineno=0, module="canvas_core.plugins")
    return out


def discover_entry_points(source: Optional[Callable[[], Iterable[Any]]] = None) -> List[Any]:
    """Entry points of group ``canvas`` (or ``source()``'s), without repeats, by name then distribution."""
    seen: Dict[tuple, Any] = {}
    for ep in source() if source is not None else installed_entry_points():
        seen.setdefault((ep.name, ep.value, normalize_dist(entry_point_distribution(ep)[0] or "")), ep)
    return sorted(seen.values(), key=lambda e: (e.name, entry_point_distribution(e)[0] or ""))


@dataclass
class PluginRecord:
    """One row of ``canvas plugins``: ``source`` is ``builtin``, ``entry-point``, ``manual``
    (``host.register_plugin``) or ``in-process``; ``status`` is ``ok``, ``failed``, ``blocked`` or
    ``disabled``; ``attempted`` (kind -> names it tried) outlives a failure, for lookups' errors.
    ``conflicts`` is derived on each read from the registries of the host that keeps the record
    (``clash_source``, set by the host), so it can never go stale; a record no host keeps has none."""

    name: str
    distribution: str
    version: str = ""
    source: str = "entry-point"
    entry_point: Optional[str] = None
    status: str = STATUS_OK
    error: Optional[str] = None
    traceback: Optional[str] = None
    hooks: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    plugin: Any = field(default=None, repr=False)
    attempted: Dict[str, List[str]] = field(default_factory=dict, repr=False)
    clash_source: Optional[Callable[[str], List[str]]] = field(default=None, repr=False, compare=False)

    @property
    def conflicts(self) -> List[str]:
        """The clashes of this plugin's refused registrations that hold now (see the class doc)."""
        return list(self.clash_source(self.name)) if self.clash_source is not None else []

    def mark_failed(self, message: str, exc: Optional[BaseException] = None) -> None:
        """Set status ``failed`` with ``message`` and the last frames of ``exc``'s traceback."""
        self.status, self.error = STATUS_FAILED, message
        if exc is not None:
            self.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])

    def describe(self) -> str:
        ver = f" {self.version}" if self.version else ""
        return f"plugin {self.name!r} ({self.distribution}{ver})"

    def to_dict(self, registered: Optional[Dict[str, List[str]]] = None,
                conflicts: Optional[List[str]] = None) -> Dict[str, Any]:
        """The row of ``canvas plugins --json``; ``discarded``: what a failed plugin had added;
        ``conflicts``: the clashes already derived by the caller (default: :attr:`conflicts`)."""
        d: Dict[str, Any] = {}
        for f in fields(self):
            if f.repr:
                d[f.name] = getattr(self, f.name)
            if f.name == "hooks":  # the key order of the rows before conflicts was derived
                d["conflicts"] = self.conflicts if conflicts is None else list(conflicts)
        failed = self.status == STATUS_FAILED
        return dict(d, hooks=list(self.hooks), warnings=list(self.warnings),
                    registered=registered or {},
                    discarded={k: sorted(set(v)) for k, v in self.attempted.items()} if failed else {})


def waits_for_current_thread(ident: int) -> Optional[float]:
    """How thread ``ident`` waits for the calling thread: the timeout (seconds; ``inf`` for none) of
    its ``Thread.join`` of it, or of its ``Future.result`` of a ``concurrent.futures`` work item it
    runs, or None when it does not wait for it.  With no timeout a lock wait of the calling thread
    on ``ident`` would never end; a timed wait ends on its own (the caller judges repeats)."""
    from concurrent.futures import Future
    from concurrent.futures.thread import _WorkItem

    def stack(frame: Any) -> Iterator[Any]:
        while frame is not None:
            yield frame
            frame = frame.f_back

    me = threading.current_thread()
    mine = [item.future for f in stack(sys._getframe(1)) if f.f_code.co_name == "run"
            and isinstance(item := f.f_locals.get("self"), _WorkItem)]
    for f in stack(sys._current_frames().get(ident)):
        if (f.f_code is threading.Thread.join.__code__ and f.f_locals.get("self") is me) or (
                f.f_code is Future.result.__code__ and any(f.f_locals.get("self") is fut for fut in mine)):
            timeout = f.f_locals.get("timeout")
            return math.inf if timeout is None else max(0.0, float(timeout))
    return None


def slow_load_message(name: str, dist: Optional[str], value: str, seconds: float) -> str:
    """The line written for plugin ``name`` still loading after ``seconds``."""
    src = f" (distribution {dist}, entry point {value!r})" if dist else f" (entry point {value!r})"
    return (f"canvas-core: plugin {name!r}{src} is still importing after {seconds:.0f} s. To skip it, set "
            f"{ENV_BLOCK}={name}, or list only the plugins you need in {ENV_ALLOW}=a,b, or set "
            f"{ENV_DISABLE}=1 to load no installed plugin")


@contextmanager
def watch_plugin_load(name: str, dist: Optional[str], value: str,
                      notes: Optional[List[str]] = None) -> Iterator[None]:
    """Name plugin ``name`` on stderr while the body runs past ``CANVAS_PLUGIN_IMPORT_WARN_S``
    (docs/limits.md), again each time the wait doubles (never killed); a slow load adds a note to
    ``notes``, and so does one that imported a package of :data:`HEAVY_MODULES`."""
    from canvas_core.schema.limits import limit

    first = float(limit("plugin_import_s"))
    heavy_before = {m for m in HEAVY_MODULES if m in sys.modules}
    done = threading.Event()
    start = time.monotonic()

    def watch() -> None:
        wait = first
        while not done.wait(max(0.0, start + wait - time.monotonic())):
            with suppress(Exception):  # a closed stderr must not raise in this thread
                print(slow_load_message(name, dist, value, time.monotonic() - start), file=sys.stderr, flush=True)
            wait *= 2

    threading.Thread(target=watch, name=f"canvas-plugin-watch-{name}", daemon=True).start()
    try:
        yield
    finally:
        done.set()
        took = time.monotonic() - start
        if notes is not None and took >= first:
            notes.append(f"loading it took {took:.1f} s (reported after CANVAS_PLUGIN_IMPORT_WARN_S={first:g} s); "
                         "import heavy packages inside the lazy factories, not at registration")
        heavy = [m for m in HEAVY_MODULES if m in sys.modules and m not in heavy_before]
        if notes is not None and heavy:
            notes.append(f"loading it imported {', '.join(sorted(heavy))} while registering; give factories as "
                         "lazy 'package.module:Object' strings (and import heavy packages inside those modules) "
                         "so that registering and listing plugins stay cheap")
