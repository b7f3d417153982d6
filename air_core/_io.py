"""Small file-system helpers shared by every writer in the package.

Every file the package writes goes through :func:`atomic_write`: the data is written to a
temporary file in the destination folder and renamed over the destination only once it is
complete, so a failure (an exception, a full disk, a killed process) never leaves a
half-written file and never destroys a file that was there before.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

__all__ = ["atomic_write", "as_path"]

# Note: os.umask is process-wide; reading it (set and restore) is not thread-safe against another
# thread changing it at the same moment, which nothing in this package does.


def as_path(path: str | os.PathLike, argument: str = "path") -> Path:
    """Return ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: ``path`` is not a ``str`` or ``os.PathLike``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{argument} must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", suffix: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` when the block succeeds.

    Args:
        path: destination file. Its folder must exist.
        mode: ``"wb"`` (default) or ``"w"`` (text, UTF-8).
        suffix: suffix of the temporary file (some writers choose the format from it);
            defaults to the destination's suffix.

    Yields:
        The open temporary file. Write to it (or to ``handle.name`` after closing is not
        needed: writers that take a file name may use ``handle.name``).

    Raises:
        FileNotFoundError: the destination folder does not exist.
        ValueError: ``mode`` is not ``"wb"`` or ``"w"``.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    dest = as_path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {str(dest)!r}: folder {str(folder)!r} does not exist")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix if suffix is not None else dest.suffix,
                                    dir=folder)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the result the permissions an ordinary open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
