"""Writes that never destroy: every file canvas-core writes goes through :func:`atomic_write`
(or its two halves, :func:`stage_write` then :meth:`StagedWrite.commit`, for files that must
all be written before any of them replaces its target).

* The target must be a regular file or a path that does not exist yet.  A directory, FIFO, device
  node or socket is refused (a ``CanvasError`` naming the path) and left as it is: a write to
  ``/dev/null`` or to a named pipe must not replace it with a regular file.
* A symbolic link is followed on purpose: the file it points to receives the new content (keeping
  that file's mode), the link itself stays a link.
* A read-only regular file is refused, not replaced: one whose mode grants write to nobody
  (``chmod a-w``; checked on the mode bits, so root, for whom ``os.access`` always says
  writable, is refused too), or one this user may not write (``os.access``).
* So is any file in a read-only directory (the target's directory, or with ``make_parents`` the
  nearest existing folder the missing ones would go in): a folder whose mode grants write to
  nobody (``chmod a-w``, e.g. 0555; root too) or that this user may not write.  Nothing is
  written there, and the files already in it stay as they are.
* The content goes to a temporary file in the target's directory, is flushed to disk
  (``fsync``), takes the mode of the file it replaces (or the mode a new file gets under the
  umask) and is renamed over the target with ``os.replace`` (atomic on POSIX).  If anything fails,
  the temporary file is removed and the target is untouched.

Torch-free (layer 0), so the schema and program writers use it too.
"""

from __future__ import annotations

import os
import stat
import tempfile
from typing import Any, Callable, Optional, Type

from canvas_core.errors import CanvasError, CanvasTypeError

__all__ = ["check_write_target", "atomic_write", "atomic_write_text", "atomic_write_bytes", "stage_write", "StagedWrite"]

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _fspath(path: Any, what: str) -> str:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise CanvasTypeError(f"{what}: the path must be a str or os.PathLike, got {type(path).__name__} {path!r:.60}")
    p = os.fspath(path)
    if not isinstance(p, str) or not p:
        raise CanvasTypeError(f"{what}: the path must be a non-empty file path, got {path!r:.60}")
    if "\x00" in p:
        raise CanvasTypeError(f"{what}: the path {p!r:.60} contains a NUL character")
    return p


def check_write_target(
    path: Any, what: str, *, error: Type[CanvasError] = CanvasError, make_parents: bool = False
) -> str:
    """The real path a write of ``what`` to ``path`` goes to (symlinks followed).

    Raises ``error`` (a ``CanvasError`` subclass) naming ``what`` and the path when the target is
    not a regular file or a missing path, is read-only, lies in a read-only directory, or (without
    ``make_parents``) its directory does not exist."""
    p = _fspath(path, what)
    if p.endswith(os.sep) or (os.altsep and p.endswith(os.altsep)):
        # "ckpts/" names a directory; abspath would drop the slash and write a file "ckpts"
        raise error(
            f"refusing to write {what} to {p!r}: the path ends with a separator, so it names a "
            "directory, not a file; nothing was written. Give a file path inside it"
        )
    real = os.path.realpath(p) if os.path.islink(p) else os.path.abspath(p)
    via = f" (the target of the symlink {p!r})" if real != os.path.abspath(p) else ""
    try:
        st = os.stat(real)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise error(f"cannot write {what} to {p!r}: {exc.strerror or exc}") from None
    if st is not None:
        for test, kind in _KINDS:
            if test(st.st_mode):
                hint = "Give a file path inside it" if kind == "a directory" else "Give the path of a regular file"
                raise error(
                    f"refusing to write {what} to {real!r}{via}: it is {kind}, not a regular file; "
                    f"nothing was written. {hint}"
                )
        if not stat.S_ISREG(st.st_mode):
            raise error(f"refusing to write {what} to {real!r}{via}: it is not a regular file")
        # the mode bits first: os.access says "writable" to root whatever the mode, and a file
        # marked read-only for everyone (chmod a-w) is a request not to overwrite it
        if stat.S_IMODE(st.st_mode) & 0o222 == 0 or not os.access(real, os.W_OK):
            raise error(
                f"cannot write {what} to {real!r}{via}: the file is read-only (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); make it writable (chmod u+w) or choose another path"
            )
        _refuse_read_only_directory(os.path.dirname(real) or ".", p, what, error)
        return real
    parent = os.path.dirname(real) or "."
    if not os.path.isdir(parent):
        if os.path.exists(parent):
            raise error(f"cannot write {what} to {p!r}: {parent!r} is not a directory")
        if not make_parents:
            raise error(
                f"cannot write {what} to {p!r}: the directory {parent!r} does not exist; create it first"
            )
        while not os.path.exists(parent) and os.path.dirname(parent) != parent:
            parent = os.path.dirname(parent)  # the folders would be made inside the nearest one that exists
        if not os.path.isdir(parent):
            return real  # a file there: making the folders fails and says so
    _refuse_read_only_directory(parent, p, what, error)
    return real


def _refuse_read_only_directory(directory: str, p: str, what: str, error: Type[CanvasError]) -> None:
    """Refuse to add or replace a file in ``directory`` when its mode grants write to nobody
    (``chmod a-w``, e.g. 0555): root could still write there (the mode bits do not bind it), but
    the owner made the folder read-only to keep its files as they are.  Also refused: a folder
    this user may not write (``os.access``).  POSIX only: on Windows a folder's read-only
    attribute does not protect its files, so it is no request to keep them."""
    if os.name == "nt":
        return
    try:
        mode = stat.S_IMODE(os.stat(directory).st_mode)
    except OSError:
        return  # gone in between: the write itself reports it
    if mode & 0o222 == 0 or not os.access(directory, os.W_OK | os.X_OK):
        raise error(
            f"cannot write {what} to {p!r}: its directory {directory!r} is read-only (mode {mode:04o}); "
            f"nothing was written. Make the directory writable (chmod u+w {directory!r}) or choose a path "
            "in another directory"
        )


#: the longest basename (bytes) a temporary name carries whole: ``"." + base + ".XXXXXXXX.tmp"``
#: adds 14 bytes, and most file systems allow 255 bytes per name (NAME_MAX)
_TEMP_BASE_MAX = 200


def _temp_prefix(base: str) -> str:
    """``"." + base + "."``, with ``base`` cut to at most :data:`_TEMP_BASE_MAX` bytes (on a
    character boundary) so that the temporary name stays within NAME_MAX even when the target's
    own name is close to it; the name is only seen until the rename."""
    if len(os.fsencode(base)) > _TEMP_BASE_MAX:
        kept, size = [], 0
        for ch in base:
            n = len(os.fsencode(ch))
            if size + n > _TEMP_BASE_MAX:
                break
            kept.append(ch)
            size += n
        base = "".join(kept)
    return "." + base + "."


def _new_file_mode() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return 0o666 & ~old


def _fsync_path(path: str, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


class StagedWrite:
    """A file written in full next to its target (flushed to disk, with the target's mode) but
    not yet in place: :meth:`commit` renames it over the target, :meth:`discard` removes it.
    Lets a caller write several files and move them in only once every one was written."""

    def __init__(self, tmp: str, real: str, path: str, what: str, error: Type[CanvasError]) -> None:
        self.tmp: Optional[str] = tmp
        self.real, self.path, self.what, self.error = real, path, what, error

    def commit(self) -> str:
        """Rename the staged file over the target (atomic); returns the real path written."""
        if self.tmp is None:
            raise self.error(f"cannot write {self.what} to {self.path!r}: it was already committed or discarded")
        try:
            os.replace(self.tmp, self.real)
        except OSError as exc:
            self.discard()
            raise self.error(f"cannot write {self.what} to {self.path!r}: {exc.strerror or exc}; "
                             "nothing was changed") from None
        self.tmp = None
        _fsync_path(os.path.dirname(self.real) or ".", directory=True)
        return self.real

    def discard(self) -> None:
        """Remove the staged file (the target stays as it was)."""
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            self.tmp = None


def stage_write(
    path: Any,
    write_fn: Callable[[str], None],
    what: str,
    *,
    error: Type[CanvasError] = CanvasError,
    make_parents: bool = False,
) -> StagedWrite:
    """The first half of :func:`atomic_write`: check the target, call ``write_fn(tmp_path)`` on a
    temporary file next to it, flush it to disk and give it the target's mode, without touching
    the target.  Failures raise ``error`` as :func:`atomic_write` does and leave nothing behind."""
    p = _fspath(path, what)
    real = check_write_target(p, what, error=error, make_parents=make_parents)
    directory = os.path.dirname(real) or "."
    tmp: Optional[str] = None
    try:
        if make_parents:
            os.makedirs(directory, exist_ok=True)
        try:
            old_mode: Optional[os.stat_result] = os.stat(real)
        except FileNotFoundError:
            old_mode = None
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(os.path.basename(real)), suffix=".tmp", dir=directory)
        os.close(fd)
        write_fn(tmp)
        _fsync_path(tmp)
        os.chmod(tmp, stat.S_IMODE(old_mode.st_mode) if old_mode is not None else _new_file_mode())
        if old_mode is not None and hasattr(os, "chown"):
            try:
                os.chown(tmp, old_mode.st_uid, old_mode.st_gid)
            except OSError:
                pass  # not permitted for another owner: the new file keeps ours
        staged = StagedWrite(tmp, real, p, what, error)
        tmp = None
        return staged
    except CanvasError:
        raise
    except Exception as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise error(f"cannot write {what} to {p!r}: {reason}; nothing was changed") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def atomic_write(
    path: Any,
    write_fn: Callable[[str], None],
    what: str,
    *,
    error: Type[CanvasError] = CanvasError,
    make_parents: bool = False,
) -> str:
    """Write ``what`` to ``path`` atomically: ``write_fn(tmp_path)`` writes the content to a
    temporary file next to the target, which then replaces the target (see the module docstring).

    Returns the real path written.  Any failure raises ``error`` (one line naming ``what`` and
    the path) and leaves the target as it was; a ``CanvasError`` raised by ``write_fn`` passes
    through unchanged."""
    return stage_write(path, write_fn, what, error=error, make_parents=make_parents).commit()


def atomic_write_bytes(path: Any, data: bytes, what: str, **kwargs: Any) -> str:
    """:func:`atomic_write` of ``data``."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, write, what, **kwargs)


def atomic_write_text(path: Any, text: str, what: str, *, encoding: str = "utf-8", **kwargs: Any) -> str:
    """:func:`atomic_write` of ``text`` (encoded with ``encoding``; an unencodable text is refused
    before anything is written)."""
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError as exc:
        err = kwargs.get("error", CanvasError)
        raise err(f"cannot write {what} to {path!r}: the text cannot be encoded as {encoding} ({exc.reason})") from None
    return atomic_write_bytes(path, data, what, **kwargs)
