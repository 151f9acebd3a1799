"""The content-addressed object cache, and the shared store behind it.

The cache (``state/objects/ab/cdef…``) holds every video ever downloaded, named by its sha256, so
re-materializing after a revert, a deleted output or a lost ``videos/`` never needs the API. Outputs
are *copies* of cache objects (a reflink where the file system has them), never hardlinks: a user who
edits a video in place must not corrupt the bytes that repairs and undo rely on. Every file here is
written as ``files`` writes them (temp file, fsync, rename; a downloaded video's fsyncs deferred to
the run's ``Syncer``).

A team shares the cache through a ``Remote`` (``s3objects``: a bucket) behind the local one: what
is committed here is uploaded there, what only the remote holds is pulled here first and checked
against its name on the way in. A remote object that fails that check is refused (remembered with
its ETag in ``refused``, so it is not offered again until someone replaces it) and never served.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

from . import failpoints
from .errors import ReconcileError, StateError
from .files import (
    CHUNK,
    FILE_MODE,
    Syncer,
    atomic_file,
    atomic_write_text,
    clone_or_copy,
    fsync_dir,
    sha256_file,
)


class Remote(Protocol):
    """A shared store of the same objects (``s3objects.S3Objects``); it raises ReconcileErrors."""

    url: str

    def etags(self, shas: Iterable[str]) -> dict[str, str]:
        """The ETag of each of ``shas`` the store holds (answers remembered for the process)."""
        ...

    def read(self, sha256: str, sink: Callable[[bytes], object]) -> str | None:
        """Stream an object into ``sink``; its ETag, or None when the store lacks it."""
        ...

    def write(self, sha256: str, path: Path) -> bool:
        """Upload a file create-only; False when the key was taken already."""
        ...

    def listing(self) -> Iterator[tuple[str, int]]:
        """(sha256, size) of every object the store holds."""
        ...

    def delete(self, sha256: str) -> None: ...

    def where(self, sha256: str) -> str: ...

    def close(self) -> None: ...


def _stderr(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


class ObjectCache:
    """Content-addressed video bytes under ``state/objects``, and a team's remote behind them."""

    def __init__(self, root: Path, *, remote: Remote | None = None) -> None:
        self.root = root
        self.remote = remote
        self.warn: Callable[[str], None] = _stderr  # a run's reporter takes over (recover)
        self._said: set[str] = set()
        self._refused: dict[str, str] | None = None  # sha256 -> ETag of a remote object refused
        # Objects this process wrote (hashed as they streamed in): verifying them again would
        # read every byte a second time for nothing.
        self.trusted: set[str] = set()
        self.syncer = Syncer()  # the deferred fsyncs of downloaded videos (see the docstring)
        # Whole copies of objects written beside their output while downloading (``begin``),
        # waiting for ``materialize`` to rename them into place: sha256 -> temp file.
        self.spares: dict[str, Path] = {}

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:]

    def close(self) -> None:
        if self.remote is not None:
            self.remote.close()

    def describe(self, repo: Path) -> str:
        """Where objects live, for ``status``: the remote (if any) and the local cache."""
        local = f"local cache {self.root.relative_to(repo).as_posix()}"
        return f"{self.remote.url} ({local})" if self.remote else local

    def has(self, sha256: str) -> bool:
        """Here, or in the remote (a remote object refused before counts only once replaced)."""
        return bool(self.present([sha256]))

    def present(self, shas: Iterable[str], *, ask: Iterable[str] | None = None) -> set[str]:
        """Those of ``shas`` the cache or its remote holds, asking the remote at most once for
        all of them (only about those in ``ask``, when given). A remote that cannot answer is an
        error, never "absent": that would offer to pay again for videos the team has."""
        wanted = set(shas)
        found = {s for s in wanted if self.path(s).is_file()}
        remote = (wanted if ask is None else wanted & set(ask)) - found
        if self.remote is not None and remote:
            refused = self.refused()
            etags = self.remote.etags(remote)
            found |= {s for s, etag in etags.items() if refused.get(s) != etag}
        return found

    def fetch(self, sha256: str) -> bool:
        """The object verified in the local cache: checked there, else pulled from the remote and
        checked on the way in. False when neither holds a copy that matches its name."""
        if self.verify(sha256):
            return True
        if self.remote is None or sha256 not in self.present([sha256]):
            return False
        incoming = self.begin()
        try:
            etag = self.remote.read(sha256, incoming.write)
            if etag is None:
                return False
            if incoming.sha256 != sha256:
                self._refuse(sha256, etag)
                raise StateError(
                    f"the shared copy {self.remote.where(sha256)} holds other bytes than its name "
                    "says: refused, nothing placed. The next apply downloads the video again "
                    "from the provider (free) while it keeps it; delete that object so the right "
                    "bytes can be shared"
                )
            incoming.commit(share=False)
        finally:
            incoming.discard()
        return True

    def share(self, sha256: str) -> None:
        """Upload a committed object unless the remote has it; a failure is said once and left
        for the next apply (the bytes are safe here), never failing the run."""
        if self.remote is None:
            return
        try:
            held = self.remote.etags([sha256]).get(sha256)
            if held is not None and self.refused().get(sha256) != held:
                return
            if not self.remote.write(sha256, self.path(sha256)) and held is not None:
                self._say("refused", f"{self.remote.where(sha256)} holds other bytes than its "
                          "name says and is never overwritten: delete it, and the next apply "
                          "shares the right ones")  # fmt: skip
        except (ReconcileError, OSError) as exc:
            self._say("upload", f"{exc}; the video is safe in the local cache, and the next "
                      "apply uploads it (and any others not shared yet)")  # fmt: skip

    def share_all(self, shas: Iterable[str]) -> None:
        """Upload those of ``shas`` held here that the remote lacks: what an earlier run could
        not share, or a cache that was filled before the remote was configured."""
        if self.remote is None:
            return
        local = {s for s in shas if self.path(s).is_file()}
        try:
            shared = self.remote.etags(local)
        except ReconcileError as exc:
            self._say("upload", f"{exc}; {len(local)} cached video(s) not checked for sharing; "
                      "the next apply tries again")  # fmt: skip
            return
        refused = self.refused()
        for sha in sorted(local):
            if sha not in shared or refused.get(sha) == shared[sha]:
                self.share(sha)

    def refused(self) -> dict[str, str]:
        if self._refused is None:
            try:
                lines = (self.root / "refused").read_text().split("\n")
            except OSError:
                lines = []
            self._refused = dict(ln.split(" ", 1) for ln in lines if ln.count(" ") == 1)
        return self._refused

    def _refuse(self, sha256: str, etag: str) -> None:
        refused = self.refused()
        refused[sha256] = etag
        text = "".join(f"{s} {e}\n" for s, e in sorted(refused.items()))
        atomic_write_text(self.root / "refused", text)

    def _say(self, topic: str, message: str) -> None:
        if topic not in self._said:
            self._said.add(topic)
            self.warn(message)

    def begin(self, spare_in: Path | None = None) -> Incoming:
        """Start an object: stream bytes in with ``write``, then ``commit`` (or ``discard``).

        Split in steps so the engine can run each on a thread while a download streams in.
        ``spare_in``: the output folder the object is bound for; a second temp file there gets
        the same bytes in the same pass, and ``materialize`` renames it into place instead of
        copying the object afterwards (on ext4, without reflinks, that copy was a fifth of a
        256 MiB video's time). Best effort: a folder that refuses it just means the copy."""
        fd, tmp = _incoming_in(self.root)
        spare: tuple[BinaryIO, Path] | None = None
        if spare_in is not None:
            with contextlib.suppress(OSError):
                sfd, stmp = _incoming_in(spare_in)
                spare = (os.fdopen(sfd, "wb"), Path(stmp))
        return Incoming(self, os.fdopen(fd, "wb"), Path(tmp), spare)

    def drop_spares(self, sha256: str | None = None) -> None:
        """Delete the spare copies no placement took (its file was already in place, or the
        spec moved on): one object's, once its download's placement is over, or every one left
        at the end of a run. A killed process's are swept as any temp file (files.sweep_temp)."""
        if sha256 is not None:
            dropped = [path] if (path := self.spares.pop(sha256, None)) else []
        else:
            spares, self.spares = self.spares, {}
            dropped = list(spares.values())
        for path in dropped:
            with contextlib.suppress(OSError):
                path.unlink()

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

    def materialize(self, sha256: str, target: Path, *, defer_sync: bool = False) -> None:
        """Place a copy of a cached object at ``target`` atomically (its fsyncs left to the
        syncer with ``defer_sync``)."""
        syncer = self.syncer if defer_sync else None
        spare = self.spares.pop(sha256, None)
        if spare is not None and spare.parent == target.parent:
            try:
                if syncer is None:
                    fsync_dir(spare)  # opens read-only and fsyncs: a file as well as a folder
                failpoints.hit("before_rename")
                os.replace(spare, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    spare.unlink()
                raise
            if syncer is None:
                fsync_dir(target.parent)
            else:
                syncer.add(target)
            return
        if spare is not None:
            with contextlib.suppress(OSError):
                spare.unlink()
        with (
            self.path(sha256).open("rb") as src,
            atomic_file(target, failpoint="before_rename", syncer=syncer) as dst,
        ):
            clone_or_copy(src, dst)


def _incoming_in(folder: Path) -> tuple[int, str]:
    """A temp file for an object in ``folder``, made only when missing: not a mkdir per object
    (three per downloaded video were a tenth of a millisecond of system time); readable as the
    cache's files are (``FILE_MODE``), not mkstemp's owner-only."""
    prefix = f".incoming.{os.getpid()}."
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
    except FileNotFoundError:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
    os.fchmod(fd, FILE_MODE)
    return fd, tmp


class Incoming:
    """An object being written: hashed as it streams in, placed under its hash on commit."""

    def __init__(
        self, cache: ObjectCache, fh: BinaryIO, tmp: Path, spare: tuple[BinaryIO, Path] | None
    ) -> None:
        self.cache = cache
        self.fh = fh
        self.tmp = tmp
        self.spare = spare  # the same bytes in the output folder (ObjectCache.begin)
        self._digest = hashlib.sha256()
        self.size = 0
        self.head = b""  # the first bytes, kept to check the container before committing
        self._behind: tuple[Future[None], Future[bool] | None] | None = None  # write_behind's

    def write(self, chunk: bytes | memoryview) -> None:
        self.settle()
        self._head(chunk)
        self._digest.update(chunk)
        self.fh.write(chunk)
        if self.spare is not None and not _written(self.spare[0], chunk):
            self.drop_spare()  # best effort (its folder's disk is full): placed by copy instead
        self.size += len(chunk)

    def write_behind(self, chunk: memoryview, aside: tuple[Executor, Executor]) -> None:
        """``write``, with the hash and the output's copy made on two threads of the caller's
        (one each, so each keeps the chunks' order) while the object's copy is written here:
        the three overlap each other and the caller's next read. ``chunk`` must stay unchanged
        until the next call of this (or ``write``, ``commit``, ``discard``) has returned: each
        first waits for the chunk before it."""
        self.settle()
        self._head(chunk)
        hashing = aside[0].submit(self._digest.update, chunk)
        spare = aside[1].submit(_written, self.spare[0], chunk) if self.spare else None
        self._behind = (hashing, spare)
        self.fh.write(chunk)
        self.size += len(chunk)

    def settle(self) -> None:
        """Wait for the chunk ``write_behind`` left to its threads."""
        behind, self._behind = self._behind, None
        if behind is not None:
            behind[0].result()
            if behind[1] is not None and not behind[1].result():
                self.drop_spare()

    def _head(self, chunk: bytes | memoryview) -> None:
        if len(self.head) < 64:
            self.head += chunk[: 64 - len(self.head)]

    def drop_spare(self) -> None:
        if self.spare is not None:
            spare, self.spare = self.spare, None
            with contextlib.suppress(OSError):
                spare[0].close()
            with contextlib.suppress(OSError):
                spare[1].unlink()

    @property
    def sha256(self) -> str:
        self.settle()
        return self._digest.hexdigest()

    def commit(self, *, share: bool = True, defer_sync: bool = False) -> tuple[str, int]:
        """fsync, rename into place under the hash, then upload it to the team's remote (unless
        it came from there); returns (sha256, size). ``defer_sync``: the fsyncs are the
        syncer's, after the rename (a download: see the module's docstring)."""
        self.settle()
        self.fh.flush()
        if not defer_sync:
            os.fsync(self.fh.fileno())
        self.fh.close()
        final = self.cache.path(self.sha256)
        try:
            os.replace(self.tmp, final)
        except FileNotFoundError:  # the first object under its prefix (or the temp file gone)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp, final)
        if defer_sync:
            self.cache.syncer.add(final)
        else:
            fsync_dir(final.parent)
        self.cache.trusted.add(self.sha256)
        if self.spare is not None:
            try:
                self.spare[0].close()  # flushed: written whole; fsynced when placed
            except OSError:
                self.drop_spare()
        if self.spare is not None:
            # Two downloads of one object (names sharing a key): one spare is kept.
            if self.cache.spares.setdefault(self.sha256, self.spare[1]) != self.spare[1]:
                with contextlib.suppress(OSError):
                    self.spare[1].unlink()
            self.spare = None
        if share:
            self.cache.share(self.sha256)
        return self.sha256, self.size

    def discard(self) -> None:
        """Drop whatever was not committed (safe to call after commit)."""
        self.settle()
        self.fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)
        self.drop_spare()


def _written(fh: BinaryIO, chunk: bytes | memoryview) -> bool:
    """Whether the output's copy took ``chunk``: it is best effort, never the download's failure."""
    try:
        fh.write(chunk)
    except (OSError, ValueError):  # ValueError: closed, dropped after an earlier failure
        return False
    return True
