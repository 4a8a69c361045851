"""Writing files safely: where a command will write, checked before it does any work (one-line errors
instead of tracebacks), and atomic writes through a temporary file and a rename.

An output file must be a regular file or not exist yet (never a directory, a device such as /dev/full,
a FIFO), in a directory that exists or can be made and that this user may write to.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from ..errors import RecipeSearchError


def check_output_dir(path: str | Path) -> Path:
    """Make ``path`` (a directory this command writes into) if needed; refuse what cannot be one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RecipeSearchError("exists and is not a directory", path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RecipeSearchError(f"cannot make the directory: {err.strerror}", path) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise RecipeSearchError("cannot write into this directory: permission denied", path)
    return path


def check_output_file(path: str | Path) -> Path:
    """Refuse an output file that is not a regular file, or whose directory cannot take it."""
    path = Path(path)
    check_output_dir(path.parent)
    refuse_non_regular(path)
    return path


def refuse_non_regular(path: Path) -> None:
    """Raise unless ``path`` is absent or a regular file (a rename would replace a device node or a FIFO)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as err:
        raise RecipeSearchError(f"cannot write here: {err.strerror}", path) from None
    if stat.S_ISDIR(mode):
        raise RecipeSearchError("is a directory (give a file name)", path)
    if not stat.S_ISREG(mode):
        raise RecipeSearchError("is not a regular file (a device or a FIFO); refusing to replace it", path)


#: how every error of a full disk says it (a study retries such a trial without counting it against the recipe)
DISK_FULL = "no space left on device (ENOSPC)"


def write_error(err: OSError, path: Path) -> RecipeSearchError:
    """A failed write as one line naming the file and the cause (ENOSPC: the disk is full)."""
    why = DISK_FULL if err.errno == errno.ENOSPC else err.strerror or str(err)
    return RecipeSearchError(f"cannot write: {why}", path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename.

    The temporary file is ``.NAME.PID-RANDOM.tmp``: what a killed process leaves is known by its pid (see
    `engine.leftovers`). Never renames over anything but a regular file (a device node or a FIFO stays as it
    is); a failed write (a full disk) is one line naming the file."""
    check_output_file(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise write_error(err, path) from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; these are ordinary files
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        refuse_non_regular(path)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(err, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
