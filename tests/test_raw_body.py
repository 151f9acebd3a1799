"""A large download read from the socket itself on the landing's thread (``Response.raw``,
``httpbody.RawBody``, ``Landing.pour``), against real sockets and the simulator: the bytes hashed
are exactly the bytes served and written, the connection goes back to the pool when the body was
read whole, a body cut short, reset or stalled fails as ``Broken`` and leaves no file behind, and
a cancelled download stops at once."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from conftest import API_KEY, Repo

from reconciler import failpoints
from reconciler import sim as simmod
from reconciler.client import VeoClient
from reconciler.config import ApiSettings
from reconciler.errors import TransientError
from reconciler.http11 import RAW_MIN, Broken, Pool
from reconciler.landing import Landing
from reconciler.objects import ObjectCache
from reconciler.sim import Simulator

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
VIDEO = b"\0\0\0\x20ftypisom" + os.urandom(3 * RAW_MIN + 12345)
HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
SPEC = "name: big\nmodel: veo-3.1-fast-generate-preview\nprompt: One long take.\n"


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def serving(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def test_a_large_body_is_poured_whole_and_its_connection_kept(tmp_path: Path) -> None:
    """A large Content-Length body is read off the loop into the object and the output's copy,
    hashed as written; the connection serves the next request. A small, a chunked and a
    to-the-end body are read through the stream as before (``raw`` is None)."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            await answer(reader, writer)
        except asyncio.IncompleteReadError:  # the client closed its kept connection
            writer.close()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while request := await reader.readuntil(b"\r\n\r\n"):  # until the client closes
            if request.startswith(b"GET /big"):
                writer.write(HEAD % len(VIDEO) + VIDEO)
            elif request.startswith(b"GET /chunked"):
                body = VIDEO[: RAW_MIN + 1]
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))  # fmt: skip
            elif request.startswith(b"GET /end"):
                writer.write(b"HTTP/1.0 200 OK\r\n\r\n" + VIDEO[: RAW_MIN + 1])
                await writer.drain()
                writer.close()
                return
            else:
                writer.write(HEAD % RAW_MIN + VIDEO[:RAW_MIN])
            await writer.drain()

    async def main() -> None:
        server, base = await serving(handler)
        http = Pool(timeout=5.0, connect_timeout=5.0, keep=2)
        cache = ObjectCache(tmp_path / "objects")
        for _ in range(2):  # the second time on the connection the first gave back
            answer = await http.request("GET", f"{base}/big", {})
            raw = answer.raw()
            assert raw is not None
            landing = Landing(cache, spare_in=tmp_path / "videos")
            try:
                assert await landing.pour(raw) == len(VIDEO)
                await answer.aclose()
                sha, size = await landing.finish()
            finally:
                await landing.close()
            assert sha == hashlib.sha256(VIDEO).hexdigest() and size == len(VIDEO)
            cache.materialize(sha, tmp_path / "videos" / "big.mp4")
            assert (tmp_path / "videos" / "big.mp4").read_bytes() == VIDEO
            assert cache.path(sha).read_bytes() == VIDEO
        for path, size in (("/small", RAW_MIN), ("/chunked", RAW_MIN + 1), ("/end", RAW_MIN + 1)):
            answer = await http.request("GET", f"{base}{path}", {})
            assert answer.raw() is None
            assert await answer.read() == VIDEO[:size]
        assert connections == 1  # the /end answer closed it
        await http.aclose()
        server.close()

    asyncio.run(main())
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["big.mp4"]


@pytest.mark.parametrize("how", ["short", "reset", "stall"])
def test_a_body_cut_short_reset_or_stalled_is_broken_and_leaves_nothing(
    tmp_path: Path, how: str
) -> None:
    """Half the body, then the server closes, resets or goes silent: ``Broken``, no file left."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD % len(VIDEO) + VIDEO[: 2 * RAW_MIN])
        await writer.drain()
        if how == "stall":
            await reader.read()  # until the client gives up and closes
        elif how == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    async def main() -> None:
        server, base = await serving(handler)
        http = Pool(timeout=0.5, connect_timeout=5.0, keep=2)
        landing = Landing(ObjectCache(tmp_path / "objects"), spare_in=tmp_path / "videos")
        answer = await http.request("GET", f"{base}/big", {})
        raw = answer.raw()
        assert raw is not None
        try:
            with pytest.raises(Broken) as broken:
                await landing.pour(raw)
        finally:
            await answer.aclose()
            await landing.close()
        if how == "stall":
            assert str(broken.value) == "ReadTimeout"
        elif how == "short":
            assert str(broken.value) == "RemoteProtocolError" and "short" in broken.value.detail
        await http.aclose()
        server.close()

    asyncio.run(main())
    assert leftovers(tmp_path) == []


def test_a_cancelled_download_stops_at_once_and_leaves_nothing(tmp_path: Path) -> None:
    """Cancelled (a stop's grace ran out) while its thread waits in a read: the socket is shut,
    the read returns, the temp files go; no wait for the minute-long read timeout."""
    sent = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD % len(VIDEO) + VIDEO[: 2 * RAW_MIN])
        await writer.drain()
        sent.set()
        await reader.read()  # the rest never comes
        writer.close()

    async def main() -> float:
        server, base = await serving(handler)
        client = VeoClient(ApiSettings(base, base, API_KEY), timeout=60.0)
        landing = Landing(ObjectCache(tmp_path / "objects"), spare_in=tmp_path / "videos")

        async def download() -> None:
            try:
                await client.download(f"{base}/v", None, landing.feed, pour=landing.pour)
            finally:
                await landing.close()

        task = asyncio.create_task(download())
        await sent.wait()
        await asyncio.sleep(0.2)  # the thread is blocked in its read by now
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        took = time.monotonic() - started
        await client.aclose()
        server.close()
        return took

    assert asyncio.run(main()) < 2.0
    assert leftovers(tmp_path) == []


def test_a_large_video_through_apply_is_whole_and_a_cut_one_retried(tmp_path: Path) -> None:
    """Through `apply`: a download cut half-way on the raw path is retried; the placed video and
    the cached object hold exactly the bytes served; no temp file is left."""
    with Simulator(api_key=API_KEY, latency=0.1, video="standin", video_size=len(VIDEO)) as sim:
        repo = Repo(tmp_path / "repo", sim)
        repo.write("specs/big.yaml", SPEC)
        sim.inject("download", simmod.cut_download())
        env = repo.env(RECONCILE_RETRY_BASE="0.05", RECONCILE_HTTP_TIMEOUT="5")
        result = repo.apply(env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert sim.downloads == 2 and sim.paid_posts == 1
        served = sim.served_bytes(next(iter(sim.operations.values())).file_id or "")
    sha = hashlib.sha256(served).hexdigest()
    [video] = (repo.path / "videos").iterdir()
    assert video.read_bytes() == served and sha[:16] in video.name
    objects = leftovers(repo.path / "state" / "objects")
    assert [p.parent.name + p.name for p in objects] == [sha]


def test_bytes_that_are_not_a_video_are_refused_on_the_raw_path(tmp_path: Path) -> None:
    """A poured body that is not an MP4 fails the commit and leaves neither temp file."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        page = b"<html>" + VIDEO[6:]
        writer.write(HEAD % len(page) + page)
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, base = await serving(handler)
        client = VeoClient(ApiSettings(base, base, API_KEY))
        landing = Landing(ObjectCache(tmp_path / "objects"), spare_in=tmp_path / "videos")
        try:
            await client.download(f"{base}/v", None, landing.feed, pour=landing.pour)
            with pytest.raises(TransientError, match="not an MP4"):
                await landing.finish()
        finally:
            await landing.close()
            await client.aclose()
        server.close()

    asyncio.run(main())
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_sigkill_half_way_through_a_raw_download_pays_once(tmp_path: Path) -> None:
    """The process killed from the landing's thread mid-body (``mid_download``), then run again:
    one POST, the video whole, no temp file left."""
    with Simulator(api_key=API_KEY, latency=0.1, video="standin", video_size=len(VIDEO)) as sim:
        repo = Repo(tmp_path / "repo", sim, processes=True)
        repo.write("specs/big.yaml", SPEC)
        killed = repo.apply(env=repo.env(**{failpoints.ENV: "mid_download:2"}))
        assert killed.returncode == -signal.SIGKILL
        result = repo.apply()
        assert result.returncode == 0, result.stdout + result.stderr
        assert sim.paid_posts == 1 and sim.downloads == 2
        served = sim.served_bytes(next(iter(sim.operations.values())).file_id or "")
    [video] = (repo.path / "videos").iterdir()
    assert video.read_bytes() == served
    assert not [p for p in leftovers(repo.path / "state") if p.name.startswith(".incoming")]


def test_chunks_written_behind_land_in_order_with_those_written_inline(tmp_path: Path) -> None:
    """``Incoming.write_behind``: the hash and the output's copy made on two threads, each buffer
    reused only once the next call has returned (as ``RawBody.pour`` does), chunks written
    inline between them waiting their turn: the object's name is the hash of exactly the bytes
    written, in their order, and both copies hold them."""
    from concurrent.futures import ThreadPoolExecutor

    cache = ObjectCache(tmp_path / "objects")
    incoming = cache.begin(tmp_path / "videos")
    buffers = [bytearray(RAW_MIN) for _ in range(2)]
    with ThreadPoolExecutor(1) as hasher, ThreadPoolExecutor(1) as copier:
        for i, at in enumerate(range(0, len(VIDEO), RAW_MIN // 4)):
            piece = VIDEO[at : at + RAW_MIN // 4]
            if i % 3 == 2:
                incoming.write(piece)  # inline: after those still on the threads
                continue
            buffer = buffers[i % 2]
            buffer[: len(piece)] = piece
            incoming.write_behind(memoryview(buffer)[: len(piece)], (hasher, copier))
        sha, size = incoming.commit(defer_sync=True)
    assert sha == hashlib.sha256(VIDEO).hexdigest() and size == len(VIDEO)
    assert cache.path(sha).read_bytes() == VIDEO
    cache.materialize(sha, tmp_path / "videos" / "big.mp4")  # renames the output's copy
    assert (tmp_path / "videos" / "big.mp4").read_bytes() == VIDEO
    cache.syncer.drain()


def test_an_output_copy_that_fails_behind_is_dropped_and_placed_by_copy(tmp_path: Path) -> None:
    """The output's copy is best effort on its thread too: when its writes fail (here, its file
    closed under it), the object still lands whole and placing copies it instead."""
    from concurrent.futures import ThreadPoolExecutor

    cache = ObjectCache(tmp_path / "objects")
    incoming = cache.begin(tmp_path / "videos")
    assert incoming.spare is not None
    incoming.spare[0].close()
    with ThreadPoolExecutor(1) as hasher, ThreadPoolExecutor(1) as copier:
        for at in range(0, len(VIDEO), RAW_MIN):
            incoming.write_behind(memoryview(VIDEO)[at : at + RAW_MIN], (hasher, copier))
        sha, _ = incoming.commit(defer_sync=True)
    assert sha == hashlib.sha256(VIDEO).hexdigest() and sha not in cache.spares
    assert leftovers(tmp_path / "videos") == []
    cache.materialize(sha, tmp_path / "videos" / "big.mp4")
    assert (tmp_path / "videos" / "big.mp4").read_bytes() == VIDEO
    cache.syncer.drain()
