"""Files written so that no reader and no crash ever sees half of one, and read safely.

Every file is written the same way: a temp file in the target folder, fsync, rename, fsync of the
folder. Downloaded videos take one exception: their fsyncs are left to a ``Syncer`` thread and
waited for at the end of the run, not before the rename. A 256 MiB video is written to the page
cache at memory speed, while its fsync waits for the disk (from 0.1 s to 2 s on the development
machine, with the disk's other traffic; twice, for the object and its output). A killed process
loses nothing either way (the bytes are the kernel's once written); only a power cut before the
end of the run can leave a renamed video short, and that is found and mended like any damaged
file: a cache object is checked against its name before it is served (``verify``), an output
against its recorded size, and the bytes fetched again from the cache or the provider.

Reads go through ``is_regular`` first where a path comes from an asset repo (never a device or a
FIFO, which would hang a read) and hash in chunks, so memory stays flat whatever the size.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from . import failpoints
from .owners import pid_alive

CHUNK = 1024 * 1024


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Files are created through mkstemp (mode 0600) and renamed into place: they get the mode an
# ordinary write would have given them, so videos and the lock stay readable by the team and a
# web server. Read once, at import, before any thread could race the two umask calls.
FILE_MODE = 0o666 & ~_read_umask()
FICLONE = 0x40049409  # linux/fs.h: share extents between files (btrfs, xfs, overlay on those)


# A file's identity as caches key it (the spec index, the lock's parse): any write moves one.
Stat = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode


def signature(st: os.stat_result) -> Stat:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def stat_of(path: str | Path) -> Stat | None:
    """The signature of whatever ``path`` names now (symlinks followed), None when nothing."""
    try:
        return signature(os.stat(path))
    except (OSError, ValueError):
        return None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Syncer:
    """fsyncs of renamed files (and then their folders, each once), on one thread, in the
    background; ``drain`` waits for all of them and raises the first failure.

    The thread gathers what arrives within ``LINGER`` of the first path into one batch (unless
    someone is draining): a folder is then fsynced once per batch, not once per file, and the
    thread wakes a few times a second instead of once per video (an apply of 1,000 small videos
    woke it 2,000 times, each wake contending with the event loop for the GIL)."""

    LINGER = 0.1

    def __init__(self) -> None:
        self._pending: list[Path] = []
        self._cond = threading.Condition()
        self._busy = False
        self._draining = 0
        self._lingering = False  # gathering a batch: an add() need not wake the thread
        self._error: OSError | None = None
        self._thread: threading.Thread | None = None

    def add(self, path: Path) -> None:
        with self._cond:
            self._pending.append(path)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fsync", daemon=True)
                self._thread.start()
            if not self._lingering:
                self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending:
                    self._busy = False
                    self._cond.notify_all()
                    if not self._cond.wait(timeout=5.0) and not self._pending:
                        self._thread = None
                        return
                    continue
                # drain() waits for this batch, and cuts the wait short; add() lets it be.
                self._busy = self._lingering = True
                deadline = time.monotonic() + self.LINGER
                while not self._draining and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(timeout=left)
                self._lingering = False
                batch, self._pending = self._pending, []
            # Every file and folder is tried, whatever failed before it: one bad file must not
            # leave the rest of the batch unsynced behind a lock that names them.
            for path in batch:
                try:
                    with contextlib.suppress(FileNotFoundError):  # retired meanwhile
                        fsync_dir(path)  # opens read-only and fsyncs: a file as well as a folder
                except OSError as exc:
                    self._error = self._error or exc
            for folder in dict.fromkeys(path.parent for path in batch):
                try:
                    fsync_dir(folder)
                except OSError as exc:
                    self._error = self._error or exc

    def drain(self) -> None:
        with self._cond:
            self._draining += 1
            self._cond.notify_all()
            try:
                while self._pending or self._busy:
                    self._cond.wait()
            finally:
                self._draining -= 1
            error, self._error = self._error, None
        if error is not None:
            raise error


@contextmanager
def atomic_file(
    target: Path, *, failpoint: str | None = None, syncer: Syncer | None = None
) -> Iterator[BinaryIO]:
    """Yield a temp file beside ``target``; on success fsync it and rename it over ``target``.
    With a ``syncer``, the fsyncs are its, after the rename (the module's docstring says when)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp"
    )
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if syncer is None:
                os.fsync(fh.fileno())
        if failpoint:
            failpoints.hit(failpoint)
        os.replace(tmp, target)
        if syncer is None:
            fsync_dir(target.parent)
        else:
            syncer.add(target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def sweep_temp(folder: Path) -> list[Path]:
    """Delete temp files that a killed process left behind (named ``.<name>.<pid>.<rand>.tmp``).

    A temp file whose writer is still alive is left alone: it may be about to be renamed.
    """
    removed: list[Path] = []
    try:
        candidates = list(folder.glob(".*.tmp"))
    except OSError:
        return removed
    for path in candidates:
        try:
            pid = int(path.name[: -len(".tmp")].rsplit(".", 2)[-2])
        except (ValueError, IndexError):
            continue
        if pid_alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def atomic_write_text(target: Path, text: str, *, failpoint: str | None = None) -> None:
    with atomic_file(target, failpoint=failpoint) as fh:
        fh.write(text.encode("utf-8"))


def is_regular(path: Path) -> bool:
    """A regular file (through symlinks): never a device, a FIFO or a folder, which would hang
    or fail a read. Everything the tool reads from an asset repo's outputs is checked so."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def sha256_file(path: Path) -> tuple[str, int]:
    """Hash a file in chunks: memory stays flat whatever its size."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def clone_or_copy(src: BinaryIO, dst: BinaryIO) -> None:
    """A reflink where the file system shares extents; else a copy inside the kernel
    (copy_file_range: no trip through this process's memory); else a plain copy."""
    try:
        fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
        return
    except OSError:
        pass
    size = os.fstat(src.fileno()).st_size
    try:
        while os.copy_file_range(src.fileno(), dst.fileno(), 64 * CHUNK):
            pass
        # A file system may end the copy early and say 0 (some FUSE and network ones): a short
        # copy would be recorded as the video, so it is made again the plain way.
        if os.fstat(dst.fileno()).st_size == size:
            return
    except OSError:  # another file system (EXDEV on old kernels), or not supported
        pass
    src.seek(0)
    dst.seek(0)
    dst.truncate()
    shutil.copyfileobj(src, dst, CHUNK)
