"""The exception hierarchy of canvas-core.

Every error a user can cause (a bad layout, topology, program, JSON file, plugin,
checkpoint or runtime input) is a :class:`CanvasError`.  Subclasses also derive from
the builtin exception that fits (``ValueError``, ``TypeError``, ``LookupError``,
``ImportError``) so existing ``except ValueError`` code keeps working.

Messages name the offending object (region, connection, field, plugin, file) and say
how to fix it.
"""

from __future__ import annotations

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


class UnknownNameKeyError(UnknownNameError, KeyError):
    """:class:`UnknownNameError` that is also a ``KeyError`` (mapping-style lookups)."""


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


class UnknownRegionError(RegionError, LookupError):
    """A region name that the layout does not declare (the message lists the declared ones)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


__all__.append("UnknownRegionError")


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
