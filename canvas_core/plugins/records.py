""":class:`PluginRecord`: what the host remembers about one plugin, whether it loaded or not."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

__all__ = ["PluginRecord", "core_version", "STATUS_OK", "STATUS_FAILED", "STATUS_BLOCKED", "STATUS_DISABLED", "STATUSES"]

STATUS_OK, STATUS_FAILED, STATUS_BLOCKED, STATUS_DISABLED = "ok", "failed", "blocked", "disabled"
STATUSES = (STATUS_OK, STATUS_FAILED, STATUS_BLOCKED, STATUS_DISABLED)


@dataclass
class PluginRecord:
    """One row of ``canvas plugins``: where a plugin came from and how its loading went.

    ``source`` is ``builtin``, ``entry-point``, ``manual`` (``host.register_plugin``) or
    ``in-process`` (``register_*`` calls); ``status`` is one of :data:`STATUSES`.
    """

    name: str
    distribution: str
    version: str = ""
    source: str = "entry-point"
    entry_point: Optional[str] = None
    status: str = STATUS_OK
    error: Optional[str] = None
    traceback: Optional[str] = None
    hooks: List[str] = field(default_factory=list)
    conflicts: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    plugin: Any = field(default=None, repr=False)
    #: registry kind -> names the plugin tried to register; kept after a failure, so a lookup of
    #: one of them can say which plugin would have provided it
    attempted: Dict[str, List[str]] = field(default_factory=dict, repr=False)

    def mark_failed(self, message: str, exc: BaseException) -> None:
        """Set status ``failed`` with ``message`` and the last frames of ``exc``'s traceback."""
        self.status = STATUS_FAILED
        self.error = message
        self.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])

    def describe(self) -> str:
        """``plugin 'x' (canvas-plugin-x 1.0)``, for messages."""
        ver = f" {self.version}" if self.version else ""
        return f"plugin {self.name!r} ({self.distribution}{ver})"

    def to_dict(self, registered: Optional[Dict[str, List[str]]] = None) -> Dict[str, Any]:
        """The JSON row of ``canvas plugins --json``; ``registered`` maps kind -> names it holds."""
        return {
            "name": self.name, "distribution": self.distribution, "version": self.version,
            "source": self.source, "entry_point": self.entry_point, "status": self.status,
            "error": self.error, "traceback": self.traceback, "hooks": list(self.hooks),
            "registered": registered or {}, "conflicts": list(self.conflicts),
            "warnings": list(self.warnings),
            # a plugin that failed keeps nothing; these are the names it had added before failing
            "discarded": ({k: sorted(set(v)) for k, v in self.attempted.items()}
                          if self.status == STATUS_FAILED else {}),
        }


def core_version() -> str:
    """The installed canvas-core version (the package's own ``__version__`` when not installed)."""
    try:
        from importlib.metadata import version

        return version("canvas-core")
    except Exception:
        import canvas_core

        return getattr(canvas_core, "__version__", "")
