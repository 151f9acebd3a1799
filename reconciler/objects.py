"""Files: the content-addressed object cache, materialized outputs, and atomic writes.

The cache (``state/objects/ab/cdef…``) holds every video ever downloaded, named by its sha256, so
re-materializing after a revert, a deleted output or a lost ``videos/`` never needs the API. Outputs
are *copies* of cache objects (a reflink where the file system has them), never hardlinks: a user who
edits a video in place must not corrupt the bytes that repairs and undo rely on.

Every file is written the same way: a temp file in the target folder, fsync, rename, fsync of the
folder. A reader (or a crash) never sees half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
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


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(target: Path, *, failpoint: str | None = None) -> Iterator[BinaryIO]:
    """Yield a temp file beside ``target``; on success fsync it and rename it over ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp"
    )
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if failpoint:
            failpoints.hit(failpoint)
        os.replace(tmp, target)
        fsync_dir(target.parent)
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


def _clone_or_copy(src: BinaryIO, dst: BinaryIO) -> None:
    try:
        fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
    except OSError:
        shutil.copyfileobj(src, dst, CHUNK)  # uses copy_file_range/sendfile where it can


class ObjectCache:
    """Content-addressed video bytes under ``state/objects``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # Objects this process wrote (hashed as they streamed in): verifying them again would
        # read every byte a second time for nothing.
        self.trusted: set[str] = set()

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:]

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def begin(self) -> Incoming:
        """Start an object: stream bytes in with ``write``, then ``commit`` (or ``discard``).

        Split in steps so the engine can run each on a thread while a download streams in."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".incoming.{os.getpid()}.", suffix=".tmp")
        os.fchmod(fd, FILE_MODE)
        return Incoming(self, os.fdopen(fd, "wb"), Path(tmp))

    @contextmanager
    def writer(self) -> Iterator[Incoming]:
        """Stream bytes in while hashing; the object lands under its hash only when complete."""
        incoming = self.begin()
        try:
            yield incoming
            incoming.commit()
        finally:
            incoming.discard()

    def add_file(self, path: Path) -> tuple[str, int]:
        """Copy an existing file (a verified output of a fresh clone) into the cache."""
        with self.writer() as incoming, path.open("rb") as src:
            while chunk := src.read(CHUNK):
                incoming.write(chunk)
        return incoming.sha256, incoming.size

    def verify(self, sha256: str) -> bool:
        """A cached object whose bytes no longer match its name is dropped, never served."""
        path = self.path(sha256)
        if not path.is_file():
            return False
        if sha256 in self.trusted:
            return True
        if sha256_file(path)[0] == sha256:
            return True
        path.unlink()
        return False

    def materialize(self, sha256: str, target: Path) -> None:
        """Place a copy of a cached object at ``target`` atomically."""
        with (
            self.path(sha256).open("rb") as src,
            atomic_file(target, failpoint="before_rename") as dst,
        ):
            _clone_or_copy(src, dst)


class Incoming:
    """An object being written: hashed as it streams in, placed under its hash on commit."""

    def __init__(self, cache: ObjectCache, fh: BinaryIO, tmp: Path) -> None:
        self.cache = cache
        self.fh = fh
        self.tmp = tmp
        self._digest = hashlib.sha256()
        self.size = 0
        self.head = b""  # the first bytes, kept to check the container before committing

    def write(self, chunk: bytes) -> None:
        if len(self.head) < 64:
            self.head += chunk[: 64 - len(self.head)]
        self._digest.update(chunk)
        self.fh.write(chunk)
        self.size += len(chunk)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def commit(self) -> tuple[str, int]:
        """fsync, then rename into place under the hash; returns (sha256, size)."""
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        final = self.cache.path(self.sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, final)
        fsync_dir(final.parent)
        self.cache.trusted.add(self.sha256)
        return self.sha256, self.size

    def discard(self) -> None:
        """Drop whatever was not committed (safe to call after commit)."""
        self.fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)
