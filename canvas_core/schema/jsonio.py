"""Reading schema and program files: a capped read and a strict JSON parse (pure Python).

* :func:`read_text_capped` reads at most ``CANVAS_MAX_FILE_BYTES`` (docs/limits.md) of a file, so
  ``canvas compile /dev/zero`` fails at once instead of filling memory; a FIFO with no writer
  reads as empty instead of blocking.
* :func:`loads_strict` refuses a JSON object that repeats a key (Python's ``json`` would keep the
  last value silently: a region written twice, or ``"T"`` twice, would vanish), and turns
  ``RecursionError`` from absurd nesting into a one-line error.
* :func:`read_json_source` (a file path or a JSON string -> text) and :func:`dump_json` (to a
  string and, atomically, a file): the one JSON I/O of ``CanvasSchema`` and ``CanvasProgram``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple, Union

from canvas_core.errors import CanvasTypeError, SchemaFileNotFoundError, SchemaFormatError, SizeLimitError
from canvas_core.schema.limits import LIMITS, limit

__all__ = ["read_text_capped", "loads_strict", "DuplicateKeyError", "read_json_source", "dump_json", "json_type_name"]


class DuplicateKeyError(SchemaFormatError):
    """A JSON object of a schema or program file holds the same key twice."""


def read_text_capped(path: "os.PathLike[str] | str", what: str) -> str:
    """The UTF-8 text of ``path``, at most ``CANVAS_MAX_FILE_BYTES`` bytes of it.

    ``FileNotFoundError`` / ``UnicodeDecodeError`` / ``OSError`` propagate for the caller to word;
    a file over the limit is a :class:`SizeLimitError` naming ``what`` and the variable."""
    cap = limit("file_bytes")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(os.fspath(path), flags)  # non-blocking open: a FIFO without a writer does not hang
    try:
        try:
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        except (ImportError, OSError, AttributeError):  # pragma: no cover - not POSIX
            pass
        chunks: List[bytes] = []
        got = 0
        while got <= cap:
            chunk = os.read(fd, min(1 << 20, cap + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    finally:
        os.close(fd)
    if got > cap:
        var = LIMITS["file_bytes"][0]
        raise SizeLimitError(
            f"{what} is larger than {cap:,} bytes (the limit on files canvas-core reads); stopped reading "
            f"there. Is it the right file? Raise the limit with {var}=<bytes> if it really is")
    return _no_bom(b"".join(chunks).decode("utf-8"))


def _no_bom(text: str) -> str:
    """``text`` without a leading byte-order mark, which JSON readers may ignore (RFC 8259) and
    Windows editors write; Python's ``json`` refuses it."""
    return text[1:] if text.startswith("\ufeff") else text


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            keys = ", ".join(repr(k) for k, _ in pairs[:8]) + (", ..." if len(pairs) > 8 else "")
            raise DuplicateKeyError(
                f"duplicate key {key!r} in one JSON object (its keys: {keys}); JSON readers keep only "
                "one of the values, so remove or rename the other")
        out[key] = value
    return out


class _Pairs(list):
    """An object's ``(key, value)`` pairs, repeats kept (second parse, to find where a key repeats)."""


def _where_repeated(node: Any, path: str = "") -> "str | None":
    """The JSON path of the first object in ``node`` (parsed into :class:`_Pairs`) that repeats a
    key, in the order the parser completes objects (inner ones first), as the strict hook met it."""
    if isinstance(node, _Pairs):
        for key, value in node:
            found = _where_repeated(value, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
        keys = [k for k, _ in node]
        return (path or "the top-level object") if len(set(keys)) != len(keys) else None
    if isinstance(node, list):
        for i, value in enumerate(node):
            found = _where_repeated(value, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def loads_strict(text: str, where: str, *, on_decode_error: Callable[[json.JSONDecodeError], str] = None) -> Any:
    """``json.loads(text)`` refusing repeated keys; errors are ``SchemaFormatError`` naming ``where``.

    ``on_decode_error(exc)`` may add a hint to the message of malformed JSON."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except DuplicateKeyError as exc:
        try:  # the rare failure path: parse again keeping repeats, to say in which object
            at = _where_repeated(json.loads(text, object_pairs_hook=_Pairs))
        except (ValueError, RecursionError):
            at = None
        raise DuplicateKeyError(f"{where}: {exc}".replace(" in one JSON object", f" in {at}" if at else
                                                          " in one JSON object")) from None
    except RecursionError:
        raise SchemaFormatError(f"{where} is nested too deeply (JSON arrays/objects) to be a canvas schema or "
                                "program; check the file") from None
    except json.JSONDecodeError as exc:
        if not text.strip():
            raise SchemaFormatError(f"{where} is not valid JSON: it is empty; give a file holding a JSON "
                                    "object {\"layout\": ..., \"regions\": ...}") from None
        hint = on_decode_error(exc) if on_decode_error is not None else ""
        raise SchemaFormatError(
            f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}{hint}") from None
    except ValueError as exc:  # valid JSON Python refuses to read, e.g. an integer of 5,000 digits
        digits = getattr(sys, "get_int_max_str_digits", lambda: 0)()
        # the first long run of digits outside JSON strings (a string of digits is read fine)
        runs = re.finditer(r'"(?:[^"\\]|\\.)*"|(\d{%d,})' % (digits + 1), text) if digits and "digits" in str(exc) else ()
        huge = next((m for m in runs if m.group(1) is not None), None)
        if huge is not None:  # Python's advice (sys.set_int_max_str_digits) is no use to a file's author
            line = text.count("\n", 0, huge.start(1)) + 1
            col = huge.start(1) - text.rfind("\n", 0, huge.start(1))
            raise SchemaFormatError(
                f"{where} holds a number of {len(huge.group(1)):,} digits at line {line}, column {col}: far too "
                "large for any size or value of a canvas schema or program; check the file") from None
        raise SchemaFormatError(f"{where} cannot be read as a canvas schema or program: {exc}") from None


def json_type_name(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages: ``null``, ``boolean``, ``number``,
    ``string``, ``array``, ``object`` (Python's would say ``NoneType``, ``list``, ``dict``)."""
    for types, name in ((type(None), "null"), (bool, "boolean"), ((int, float), "number"), (str, "string"),
                        ((list, tuple), "array"), (dict, "object")):
        if isinstance(value, types):
            return name
    return type(value).__name__


def read_json_source(source: Any, kind: str, *, empty: str, nul: Callable[[str], str],
                     missing: Callable[[Any], str] = lambda source: "") -> Tuple[str, str]:
    """``(text, where)`` of a ``from_json`` argument: JSON text (a string or UTF-8 bytes starting
    with ``{`` or ``[``) or the path of a ``kind`` file (``"schema"``, ``"program"``).

    ``empty`` ends the message for an empty string, ``nul(text)`` words a path with a NUL byte,
    ``missing(source)`` adds a hint to "does not exist".  Every failure is a ``SchemaFormatError``
    (``CanvasTypeError`` for a value that is neither text nor a path)."""
    if isinstance(source, (bytes, bytearray)):
        try:
            source = bytes(source).decode("utf-8")
        except UnicodeDecodeError:
            raise SchemaFormatError(
                f"from_json got bytes that are not UTF-8 text; pass a {kind} file path or JSON text") from None
    text = _no_bom(source.lstrip()) if isinstance(source, str) else None
    if text is not None and text.lstrip().startswith(("{", "[")):
        return text, f"{kind} JSON string"
    if not isinstance(source, (str, os.PathLike)):
        raise CanvasTypeError(f"from_json expects a file path or a JSON string, got {type(source).__name__}")
    if isinstance(source, str) and not source.strip():
        raise SchemaFormatError(f"from_json got an empty string; {empty}")
    if "\x00" in os.fspath(source):
        raise SchemaFormatError(nul(os.fspath(source)))
    path = Path(source)
    where = f"{kind} file {str(path)!r}"
    try:
        return read_text_capped(path, where), where
    except FileNotFoundError:
        raise SchemaFileNotFoundError(f"{where} does not exist{missing(source)}", os.fspath(source)) from None
    except UnicodeDecodeError:
        raise SchemaFormatError(f"{where} is not UTF-8 text") from None
    except OSError as exc:
        raise SchemaFormatError(f"cannot read {where}: {exc.strerror or exc}") from None


def dump_json(data: Any, path: Union[str, "os.PathLike[str]", None], what: str, *, indent: Optional[int] = 2) -> str:
    """``json.dumps(data, indent=indent)``; also written to ``path`` (atomically, with a final
    newline; a directory, FIFO or device is refused, a symlink written through) when given."""
    text = json.dumps(data, indent=indent)
    if path is not None:
        from canvas_core._safe_write import atomic_write_text

        atomic_write_text(path, text + "\n", what, error=SchemaFormatError)
    return text
