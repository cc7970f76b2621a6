"""Replace a file or a folder whole or not at all, on any local filesystem.

`atomic_write` writes a file (temp file beside it, fsync, rename); `replace_folder` puts a finished folder (a sharded
checkpoint) in the place of the old one by one atomic exchange.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
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


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` reach the disk with the folder's entry (best effort: not every filesystem can)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
    _fsync_folder(path.parent)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap the entries `a` and `b` in one step (Linux renameat2 RENAME_EXCHANGE); False where that is unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not glibc >= 2.28 / not Linux
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a filesystem without exchange (NFS, some FUSE)
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_folder(new: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make the finished folder `new` (beside `path`, same filesystem) be `path`, replacing a folder or file there.

    Where the filesystem can exchange two entries atomically (Linux: ext4, xfs, btrfs, tmpfs), `path` always names
    the whole old entry or the whole new one. Elsewhere the old entry is first renamed aside to `.NAME.old`, so a
    crash between the two renames leaves both whole, the old one under that name.
    """
    new, path = Path(new), Path(path)
    if not path.exists() and not path.is_symlink():
        os.rename(new, path)
    elif _exchange(new, path):
        shutil.rmtree(new) if new.is_dir() else new.unlink()  # `new` now names the old entry
    else:
        aside = path.with_name(f".{path.name}.old")
        if aside.is_dir():
            shutil.rmtree(aside)
        os.rename(path, aside)
        os.rename(new, path)
        shutil.rmtree(aside) if aside.is_dir() else aside.unlink()
    _fsync_folder(path.parent)
