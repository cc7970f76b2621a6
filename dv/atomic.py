"""atomic_write(): replace a file whole or not at all, on any local filesystem (temp file beside it, fsync, rename)."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dv.errors import ConfigError


def _disk_full(folder: Path) -> bool:
    """Whether `folder`'s filesystem has (next to) no space left for this process."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 2**20


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no other portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder; when the block ends, make it `path` atomically.

    The temp file is on the same filesystem as `path` (a rename across filesystems is a copy, and a kill or a
    full disk during a copy leaves a partial file under the final name), its data reach the disk (fsync)
    before the rename, and it gets the mode a new file would get (0666 less the umask; mkstemp makes 0600).
    If the block fails, the temp file is removed and `path` is left as it was. A failure on a full disk is an
    OSError ENOSPC naming `path` (torch.save reports it as a RuntimeError about stream positions), which the
    CLI prints as one line.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(
            f"cannot write {str(path)!r}: a part of {str(path.parent)!r} is a file, not a folder"
        ) from None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        if isinstance(exc, OSError):
            full = exc.errno == errno.ENOSPC
        else:  # judged before the temp file's space is freed
            full = isinstance(exc, Exception) and _disk_full(path.parent)
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (nothing was replaced)", str(path)) from exc
        raise
    # The rename itself reaches the disk with the folder's entry.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
