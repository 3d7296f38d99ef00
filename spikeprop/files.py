"""Files written so that a reader sees the old or the new version, never a part of one.

``atomic_write_bytes`` writes to a temporary name in the same directory, flushes it to disk and
renames it over the target; an OS error (a read-only directory, a full disk, a path under a file)
becomes a one-line ``RunFileError`` naming the path, and the previous file is left as it was.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from spikeprop import SpikepropError


class RunFileError(SpikepropError, OSError):
    """A file of a run could not be written: a one-line user error that is also an OSError."""


def reason(e: OSError) -> str:
    """What an OS error means, in a few words."""
    return "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or type(e).__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def prepare_parent(path: str | Path) -> None:
    """Create ``path``'s directory; a RunFileError naming the file when an ancestor is not a directory."""
    path = Path(path)
    for ancestor in path.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise RunFileError(f"cannot write {path}: {ancestor} is not a directory")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFileError(f"cannot write {path}: {reason(e)}") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a part.

    The file gets the permissions of a normally created file (0666 minus the umask), not
    mkstemp's 0600. An OS error (a read-only directory, a full disk, a path under a file) is a
    SpikepropError naming the path; the previous file is left as it was.
    """
    path = Path(path)
    tmp = None
    try:
        if path.is_dir():
            raise RunFileError(f"cannot write {path}: it is a directory")
        prepare_parent(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~_umask())
        os.replace(tmp, path)
        tmp = None
    except RunFileError:
        raise
    except OSError as e:
        raise RunFileError(f"cannot write {path}: {reason(e)}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
