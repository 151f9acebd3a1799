"""A download's bytes on their way into the object cache, at the speed of the wire.

The event loop only receives: the bytes are gathered into pieces of ``PIECE`` bytes, and each
piece is hashed and written on one thread of the download's own while the next arrives, at most
``AHEAD`` pieces behind, so memory stays flat whatever the video's size (a few MiB) and the
loop never waits on the disk or on sha256 (about 1 GB/s here: a 256 MiB video hashed inline
would stall every other poll for a quarter of a second). Each byte is hashed once, as it is
written; the object is trusted from then on (``ObjectCache.trusted``). A small video (one piece)
costs one thread hop in all: begin, write, check and commit together.

A large video on a plain connection (``http11.Response.raw``: the simulator, a local mirror) is
not received by the loop at all: ``pour`` reads it from the socket on that same thread, into two
reused buffers in turn, and writes each read there while two more threads of the download's hash
it and write the output's copy (``Incoming.write_behind``): no wake of the loop, copy or hand-over
per read. Over TLS the loop receives as above: the bytes on the socket are not the body's.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import failpoints
from .errors import TransientError
from .objects import Incoming, ObjectCache

if TYPE_CHECKING:
    from .http11 import RawBody

T = TypeVar("T")
PIECE = 1 << 20
AHEAD = 2  # pieces handed to the writer, not yet written: 2 MiB more RSS at most (8: 6 MiB)


class Landing:
    """Feed it the chunks of one download, then ``finish``; ``close`` in every case."""

    def __init__(
        self,
        cache: ObjectCache,
        run: Callable[..., Awaitable[Any]] | None = None,
        *,
        spare_in: Path | None = None,
    ) -> None:
        self.cache = cache
        self._spare_in = spare_in  # the output's folder: its copy is written in the same pass
        # Where a small video's one hop goes (the run's state thread: ``Context.db``).
        self._run = run or asyncio.to_thread
        self._parts: list[bytes] = []
        self._gathered = 0
        self._incoming: Incoming | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._inflight: deque[asyncio.Future[Any]] = deque()
        self._aside: tuple[ThreadPoolExecutor, ...] = ()

    async def feed(self, chunk: bytes) -> None:
        self._parts.append(chunk)
        self._gathered += len(chunk)
        failpoints.hit("mid_download")
        if self._gathered < PIECE:
            return
        piece = self._take()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="landing")
        future = asyncio.get_running_loop().run_in_executor(self._writer, self._write, piece)
        future.add_done_callback(_retrieved)
        self._inflight.append(future)
        while len(self._inflight) > AHEAD:
            await self._inflight.popleft()

    async def pour(self, body: RawBody) -> int:
        """Land a body read on the writer thread itself (``RawBody.pour``): each read written
        there from two reused buffers in turn, hashed and copied to the output beside it, with no
        event-loop hop, copy or piece handed over in between (a large video over a plain
        connection). Its size; then ``finish``."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="landing")
        while self._inflight:  # anything fed before lands first
            await self._inflight.popleft()
        rest = self._take()
        loop = asyncio.get_running_loop()
        size: int = await loop.run_in_executor(self._writer, self._pour, rest, body)
        return size

    def _pour(self, rest: list[bytes], body: RawBody) -> int:
        self._write(rest)
        return body.pour(self._land)

    def _land(self, view: memoryview) -> None:
        if self._incoming is None:
            self._incoming = self.cache.begin(self._spare_in)
        if not self._aside:  # sha256 and the output's copy, each beside the object's write
            self._aside = tuple(ThreadPoolExecutor(1, thread_name_prefix="landing") for _ in "hs")
        self._incoming.write_behind(view, (self._aside[0], self._aside[1]))
        failpoints.hit("mid_download")

    def _take(self) -> list[bytes]:
        """The chunks gathered so far, as they came: not joined, which would copy every byte."""
        piece, self._parts, self._gathered = self._parts, [], 0
        return piece

    def _write(self, piece: list[bytes]) -> None:
        if self._incoming is None:
            self._incoming = self.cache.begin(self._spare_in)
        for chunk in piece:
            self._incoming.write(chunk)

    def _complete(self, rest: list[bytes]) -> tuple[str, int]:
        self._write(rest)
        assert self._incoming is not None
        if self._incoming.head[4:8] != b"ftyp":
            raise TransientError("the downloaded file is not an MP4 video")
        # Written whole and hashed on the way: fsynced by the syncer, not before the rename.
        done = self._incoming.commit(defer_sync=True)
        self._incoming = None  # committed: nothing left for close() to drop
        return done

    async def finish(self) -> tuple[str, int]:
        """Write what is left, check the container, commit under the hash: (sha256, size)."""
        done, _ = await self.finish_then(None)
        return done

    async def finish_then(
        self, then: Callable[[str, int], T] | None
    ) -> tuple[tuple[str, int], T | None]:
        """``finish``, and ``then``'s result when it ran in the same hop, right after the commit
        (a small video, committed where ``run`` puts it: the caller's state work then costs no
        hop of its own); else None: a large video is committed on the download's own thread,
        and the caller runs it where it belongs."""
        rest = self._take()
        if self._writer is None:
            done: tuple[tuple[str, int], T | None] = await self._run(
                self._complete_then, rest, then
            )
            return done
        while self._inflight:
            await self._inflight.popleft()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._complete, rest), None

    def _complete_then(
        self, rest: list[bytes], then: Callable[[str, int], T] | None
    ) -> tuple[tuple[str, int], T | None]:
        done = self._complete(rest)
        return done, then(*done) if then is not None else None

    async def close(self) -> None:
        """Drop whatever was not committed (safe after ``finish``), and the writer thread. The
        writer runs in order, so the drop comes after any piece still being written."""
        writer, self._writer = self._writer, None
        self._inflight.clear()
        if writer is None:
            if self._incoming is not None:
                await self._run(self._discard)
            return
        try:
            await asyncio.get_running_loop().run_in_executor(writer, self._discard)
        finally:
            writer.shutdown(wait=False)

    def _discard(self) -> None:
        if self._incoming is not None:
            self._incoming.discard()
        for thread in self._aside:  # idle: discard and commit wait for what they were given
            thread.shutdown()


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A piece's failure is raised by ``finish``, or dropped with the download: never logged."""
    if not future.cancelled():
        future.exception()
