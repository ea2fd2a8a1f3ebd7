"""The exception hierarchy of canvas-core.

Every error a user can cause (a bad layout, topology, program, JSON file, plugin,
checkpoint or runtime input) is a :class:`CanvasError`.  Subclasses also derive from
the builtin exception that fits (``ValueError``, ``TypeError``, ``KeyError``,
``ImportError``, ``FileNotFoundError``) so existing ``except ValueError`` code keeps working;
where canvas-engineering raised another builtin for the same mistake (``KeyError`` for an
unknown region, ``ValueError`` for an unknown attention type, ``FileNotFoundError`` for a missing
schema file), the error derives from that one too.

Messages name the offending object (region, connection, field, plugin, file) and say
how to fix it.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

__all__ = [
    "CanvasError",
    "SchemaError",
    "RegionError",
    "TopologyError",
    "SchemaFormatError",
    "CanvasTypeError",
    "ProgramError",
    "PluginError",
    "DuplicateRegistrationError",
    "UnknownNameError",
    "PluginLoadError",
    "UnavailableError",
    "CompileError",
    "CheckpointError",
    "BackboneError",
    "ShapeError",
]


class CanvasError(Exception):
    """Base class of every user-facing canvas-core error."""


class SchemaError(CanvasError, ValueError):
    """A layout, region, connection or schema is invalid."""


class RegionError(SchemaError):
    """A region is malformed (bounds, period, overlap, ...) or unknown."""


class TopologyError(SchemaError):
    """A connection or topology is invalid (unknown region, bad offset, ...)."""


class SchemaFormatError(SchemaError):
    """A schema / program file or dict is malformed (bad JSON, wrong types, missing keys)."""


class CanvasTypeError(CanvasError, TypeError):
    """An argument has the wrong type."""


class ProgramError(CanvasError, ValueError):
    """A program declaration (field, family, carrier, operator, clock, ...) is invalid."""


class PluginError(CanvasError):
    """Base class of plugin and registry errors."""


class DuplicateRegistrationError(PluginError, ValueError):
    """Two providers registered the same name without ``override=True``."""


class UnknownNameError(PluginError, LookupError):
    """A registry has no entry of that name (the message lists the known ones)."""

    def __str__(self) -> str:  # LookupError would otherwise quote the message like a KeyError
        return str(self.args[0]) if self.args else ""


class PluginLoadError(PluginError, ImportError):
    """A plugin failed to load, and a name it would have provided was requested."""


class UnavailableError(PluginError, RuntimeError):
    """A registered implementation cannot run here (device, dtype, missing package)."""


class SpecError(PluginError, ValueError):
    """A registration or a runtime context is malformed: bad name, factory path, metadata or
    registry kind, or a device / dtype torch does not know."""


class UnknownNameKeyError(UnknownNameError, KeyError, ValueError):
    """:class:`UnknownNameError` that is also a ``KeyError`` (mapping-style lookups) and a
    ``ValueError`` (canvas-engineering's ``create_attention`` documents ``ValueError`` for a type
    it does not know, and ``ATTENTION_REGISTRY[name]`` raised ``KeyError``)."""


class FactoryError(PluginError, RuntimeError):
    """A registered factory raised a non-canvas exception while building (the cause is chained)."""


class FactoryValueError(FactoryError, ValueError):
    """:class:`FactoryError` for a ``ValueError`` of the factory (``except ValueError`` still works)."""


class FactoryTypeError(FactoryError, TypeError):
    """:class:`FactoryError` for a ``TypeError`` of the factory (e.g. an unexpected keyword)."""


class CompileError(CanvasError, ValueError):
    """The compiler could not lower or apply a program."""


class CheckpointError(CanvasError, ValueError):
    """A checkpoint is malformed, untrusted or does not match the model / schema."""


class BackboneError(CanvasError, TypeError):
    """A model cannot be grafted (no adapter for it, unexpected structure)."""


class ShapeError(CanvasError, ValueError):
    """A tensor given to a canvas module has the wrong shape, dtype or device."""


class UnknownRegionError(RegionError, KeyError):
    """A region name that the layout does not declare (the message lists the declared ones).
    Also a ``KeyError``, which canvas-engineering's region lookups raised (``layout.region_indices``,
    ``canvas.extract``, ...), so ``except KeyError`` code written for it still catches it."""

    def __str__(self) -> str:  # KeyError would otherwise show the message quoted, like a key
        return str(self.args[0]) if self.args else ""


__all__.append("UnknownRegionError")


class SchemaFileNotFoundError(SchemaFormatError, FileNotFoundError):
    """The error for a schema or program file to read that does not exist: also the
    ``FileNotFoundError`` canvas-engineering's ``from_json`` let through (``errno`` is ``ENOENT``,
    ``filename`` the path), so ``except OSError`` / ``except FileNotFoundError`` code catches it."""

    def __init__(self, message: str, filename: Any = None) -> None:
        super().__init__(message)
        self.errno, self.strerror, self.filename = errno.ENOENT, os.strerror(errno.ENOENT), filename

    def __str__(self) -> str:  # OSError would otherwise show "[Errno 2] ...: 'path'" instead of the message
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):  # pickles (multiprocessing, ...) with its path
        return (type(self), (str(self), self.filename))


__all__.append("SchemaFileNotFoundError")


class AttentionContractError(PluginError, TypeError):
    """An attention type's module cannot be called the way canvas layers call a type
    (see ``canvas_core.runtime.type_call`` and docs/plugins.md, "The attention-type contract")."""


__all__.append("AttentionContractError")


def closest(name: str, known, cutoff: float = 0.5):
    """The known name closest to ``name`` (for "did you mean"), or None."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(name: str, known) -> str:
    """A ' Did you mean 'x'?' suffix for error messages, or '' when nothing is close."""
    close = closest(name, known, cutoff=0.6)
    return f" Did you mean {close!r}?" if close else ""


def brief_number(value: Any, digits: int = 12) -> str:
    """``value`` as a message shows it: an integer of more than ``digits`` digits abbreviated to
    three significant figures (``10**30`` -> ``1e+30``, truncated, never rounded up), anything
    else as ``str``; a user's absurd offset must not flood the message."""
    if not isinstance(value, int) or isinstance(value, bool) or abs(value) < 10 ** digits:
        return str(value)
    sign = "-" if value < 0 else ""
    try:
        text = str(abs(value))
    except ValueError:  # over Python's int-to-str digit limit: the size alone
        return f"~{sign}1e+{int(abs(value).bit_length() * 0.30103)}"
    mantissa = text[0] + ("." + text[1:3].rstrip("0") if text[1:3].strip("0") else "")
    return f"{sign}{mantissa}e+{len(text) - 1}"


class SizeLimitError(CanvasError, ValueError):
    """A size (positions, width, batch, loops, tensor elements, file bytes) is over its limit
    (``canvas_core.schema.limits``; each limit is an environment variable, see docs/limits.md)."""


__all__.append("SizeLimitError")


class SettingError(CanvasError, ValueError):
    """An environment variable that canvas-core reads holds a value it cannot use (the message
    names the variable and the values it accepts)."""


class PluginSettingError(SettingError, PluginError):
    """:class:`SettingError` of a plugin-loading control (``CANVAS_DISABLE_PLUGIN_AUTOLOAD``, ...);
    also a :class:`PluginError`, as these controls' errors have always been."""


class LimitSettingError(SettingError, SizeLimitError):
    """:class:`SettingError` of a size-limit variable (``CANVAS_MAX_POSITIONS``, ...); also a
    :class:`SizeLimitError`, as these variables' errors have always been."""


__all__ += ["SettingError", "PluginSettingError", "LimitSettingError"]


class PluginNotInstalledError(UnknownNameError, ImportError):
    """``from canvas_core import X`` of a name an optional plugin distribution provides, when that
    distribution is not installed: an ``ImportError`` (what the import statement raises) that keeps
    the install hint Python's own "cannot import name" would drop."""


class PluginLoadAttributeError(PluginError, AttributeError):
    """A name a module exports lazily (``canvas_core.MambaAttention``, ...) whose plugin failed to
    load, probed by name (``hasattr``, ``getattr``, a library doing so): an ``AttributeError``,
    as those expect, so ``hasattr`` gives False and ``getattr(module, name, None)`` None.  Its
    message is the plugin's load error, kept as ``load_error`` (and ``__cause__``).  Code naming
    the attribute (``module.Name``, ``from module import Name``) gets that :class:`PluginLoadError`
    itself: one class cannot be both an ``ImportError`` and an ``AttributeError`` (their instance
    layouts clash); ``except PluginError`` catches both."""

    def __init__(self, message: str, load_error: Any = None) -> None:
        super().__init__(message)
        self.load_error = load_error


__all__.append("PluginLoadAttributeError")
__all__.append("PluginNotInstalledError")


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` in the calling function point at the first
    frame outside canvas-core (the user's call), however deep inside the library the warning is made."""
    level, f = 2, sys._getframe(2)
    while f is not None and str(f.f_globals.get("__name__", "")).partition(".")[0] == "canvas_core":
        level, f = level + 1, f.f_back
    return level
