"""The lean HTTP/1.1 client (``reconciler.http11``) against real sockets: framing, keep-alive,
a connection the server closed while idle, failures told apart by when they happened, the proxy
fallback; and a download's output copy written in the same pass (``ObjectCache.begin``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from reconciler import http11, httpproxy
from reconciler.http11 import Broken, ConnectFailed, Pool, Unsendable
from reconciler.httpproxy import ProxiedPool
from reconciler.objects import ObjectCache

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serving(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


@contextlib.asynccontextmanager
async def served(handler: Handler) -> AsyncIterator[tuple[str, Pool]]:
    """A loopback server running ``handler`` per connection and a pool to ask it, both closed
    after (the handlers given a moment to see the close and end)."""
    server, base = await serving(handler)
    http = pool()
    try:
        yield base, http
    finally:
        await http.aclose()
        await asyncio.sleep(0.1)
        server.close()


def pool() -> Pool:
    return Pool(timeout=5.0, connect_timeout=5.0, keep=2)


def test_keep_alive_chunked_and_close_delimited_bodies() -> None:
    """Content-Length and chunked answers on one kept connection, then one read to its end."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello")
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n")  # fmt: skip
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nto the end")
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with served(handler) as (base, http):
            first = await http.request("GET", f"{base}/a", {})
            assert await first.read() == b"hello" and first.headers["x-a"] == "1, 2"
            second = await http.request("GET", f"{base}/b", {})
            assert await second.read() == b"abcde"
            third = await http.request("GET", f"{base}/c", {})
            assert await third.read() == b"to the end"
        assert connections == 1

    asyncio.run(main())


def test_a_get_on_a_connection_closed_while_idle_is_sent_again() -> None:
    """The server drops the kept connection after its answer: the next GET goes out on a new
    one, unseen by the caller. A POST is never resent."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # without saying Connection: close

    async def main() -> None:
        async with served(handler) as (base, http):
            for _ in range(3):
                answer = await http.request("GET", f"{base}/op", {"x-goog-api-key": "k"})
                assert await answer.read() == b"ok"
                await asyncio.sleep(0.05)  # the server's close arrives while idle
        assert len(seen) == 3 and all(b"x-goog-api-key: k" in s for s in seen)

    asyncio.run(main())


def test_failures_are_told_apart_by_when_they_happened() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    async def main() -> None:
        http = pool()
        server, base = await serving(cut)
        short = await http.request("GET", f"{base}/v", {})
        with pytest.raises(Broken, match="RemoteProtocolError") as cut_short:
            await short.read()
        assert "short" in cut_short.value.detail
        server.close()
        server, base = await serving(silent)
        with pytest.raises(Broken, match="RemoteProtocolError"):
            await http.request("POST", f"{base}/p", {}, b"{}", fresh=True)
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectFailed, match="ConnectError"):
            await http.request("POST", f"{base}/p", {}, b"{}", fresh=True)
        with pytest.raises(Unsendable):
            await http.request("GET", "ftp://127.0.0.1/x", {})
        with pytest.raises(Unsendable):
            await http.request("GET", f"{base}/x", {"x-bad": "a\r\nInjected: 1"})
        await http.aclose()

    asyncio.run(main())


def test_a_read_past_the_timeout_is_broken() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # no answer: wait for the client to give up and close
        writer.close()

    async def main() -> None:
        server, base = await serving(stall)
        http = Pool(timeout=0.2, connect_timeout=5.0, keep=1)
        with pytest.raises(Broken, match="ReadTimeout"):
            await http.request("GET", f"{base}/slow", {})
        await http.aclose()
        await asyncio.sleep(0.1)  # the server sees the close and closes its side
        server.close()

    asyncio.run(main())


def test_a_proxy_in_the_environment_hands_the_requests_to_httpx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    assert not httpproxy.proxied()
    assert isinstance(httpproxy.pool(timeout=1, connect_timeout=1, keep=1), Pool)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert httpproxy.proxied()
    assert isinstance(httpproxy.pool(timeout=1, connect_timeout=1, keep=1), ProxiedPool)


def test_the_proxy_variables_are_read_as_the_standard_library_reads_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``environment_proxies`` (no import of urllib.request at start-up) gives what
    ``urllib.request.getproxies_environment`` gives, over 3,000 environments of upper, lower
    and mixed-case names, empty values, NO_PROXY and a CGI script's REQUEST_METHOD."""
    import random
    import urllib.request

    names = ["HTTP_PROXY", "http_proxy", "Http_Proxy", "HTTPS_PROXY", "https_proxy",
             "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy", "FTP_PROXY", "socks_proxy",
             "HTTP_PROXY_X", "PROXY", "_proxy", "REQUEST_METHOD", "http_PROXY"]  # fmt: skip
    values = ["", "http://a.invalid:3128", "http://b.invalid", "localhost"]
    rng = random.Random(11)
    for key in list(os.environ):
        if key.lower().endswith("_proxy") or key == "REQUEST_METHOD":
            monkeypatch.delenv(key)
    for _ in range(3000):
        env = {name: rng.choice(values) for name in rng.sample(names, rng.randint(0, 6))}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert httpproxy.environment_proxies(os.environ) == (
            urllib.request.getproxies_environment()
        ), env
        for name in env:
            monkeypatch.delenv(name)


def test_https_verifies_certificates() -> None:
    context = http11.tls_context()
    assert context.verify_mode.name == "CERT_REQUIRED" and context.check_hostname


def test_malformed_chunked_answers_end_in_broken_not_a_hang() -> None:
    """A connection closed among the trailers, and chunk sizes ``int(x, 16)`` would take."""
    answers = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nok\r\n0\r\n\r\n",
    ]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answers.pop(0))
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with served(handler) as (base, http):
            for _ in range(3):
                answer = await http.request("GET", f"{base}/x", {})
                with pytest.raises(Broken):
                    async with asyncio.timeout(3):  # the trailers' loop never yielded before
                        await answer.read()

    asyncio.run(main())


def test_bytes_waiting_on_an_idle_connection_retire_it() -> None:
    """A server that says something unasked (a 408) before closing: its bytes are never read as
    the next request's answer."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            seen.append(await read_request(reader))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
            await writer.drain()
        writer.close()

    async def main() -> None:
        async with served(handler) as (base, http):
            assert await (await http.request("GET", f"{base}/a", {})).read() == b"ok"
            await asyncio.sleep(0.1)
            second = await http.request("GET", f"{base}/b", {})
            assert second.status_code == 200 and await second.read() == b"ok"
        assert [r.split(b" ")[1] for r in seen] == [b"/a", b"/b"]  # each on its own connection

    asyncio.run(main())


def test_what_http_cannot_carry_is_encoded_or_refused_before_sending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A non-ASCII path is percent-encoded (as httpx did); a header HTTP cannot carry, or a
    certificate file that is not there, is refused before anything leaves."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with served(handler) as (base, http):
            await (await http.request("GET", f"{base}/vid\u00e9o a.mp4", {})).read()
            with pytest.raises(Unsendable):
                await http.request("GET", f"{base}/b", {"x-goog-api-key": "cl\u00e9\u2603"})
            monkeypatch.setattr(http11, "_tls", None)
            monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
            with pytest.raises(Unsendable, match="TLS"):
                await http.request("GET", "https://127.0.0.1:9/x", {})
        assert len(seen) == 1 and seen[0].startswith(b"GET /vid%C3%A9o%20a.mp4 HTTP/1.1")

    asyncio.run(main())


def test_the_output_copy_is_written_in_the_same_pass_and_renamed_into_place(
    tmp_path: Path,
) -> None:
    """The spare beside the output gets the same bytes; placing renames it (nothing under the
    final name before); a spare never placed is deleted; without one, the copy is made."""
    cache = ObjectCache(tmp_path / "objects")
    videos = tmp_path / "videos"
    data = b"\0\0\0\x20ftypisom" + os.urandom(3 << 20)
    incoming = cache.begin(videos)
    for i in range(0, len(data), 1 << 20):
        incoming.write(data[i : i + (1 << 20)])
    assert [p.name for p in videos.iterdir() if not p.name.startswith(".")] == []
    sha, size = incoming.commit(defer_sync=True)
    assert sha == hashlib.sha256(data).hexdigest() and size == len(data)
    spare = cache.spares[sha]
    target = videos / "clip.mp4"
    cache.materialize(sha, target, defer_sync=True)
    assert not spare.exists() and target.read_bytes() == data
    assert cache.path(sha).read_bytes() == data
    cache.syncer.drain()
    # A second object whose spare no placement takes: dropped at the end of the run.
    other = cache.begin(videos)
    other.write(data[:100])
    sha2, _ = other.commit(defer_sync=True)
    leftover = cache.spares[sha2]
    assert leftover.exists()
    again = cache.begin(videos)  # the same object downloaded twice: one spare is kept
    again.write(data[:100])
    again.commit(defer_sync=True)
    assert cache.spares[sha2] == leftover
    # One download's spare is dropped alone once its placement is over: another download's,
    # still on its way to its own placement (the daemon runs several at once), is kept.
    third = cache.begin(videos)
    third.write(data[:200])
    sha3, _ = third.commit(defer_sync=True)
    cache.drop_spares(sha3)
    assert sha3 not in cache.spares and cache.spares[sha2] == leftover and leftover.exists()
    cache.drop_spares()
    assert not leftover.exists() and sorted(p.name for p in videos.iterdir()) == ["clip.mp4"]
    # No spare (an earlier run's object): the copy is made as before.
    cache.materialize(sha2, videos / "again.mp4", defer_sync=False)
    assert (videos / "again.mp4").read_bytes() == data[:100]
    # A download that fails leaves neither temp file behind.
    failed = cache.begin(videos)
    failed.write(data[:10])
    failed.discard()
    assert sorted(p.name for p in videos.iterdir()) == ["again.mp4", "clip.mp4"]


def test_requests_go_to_the_host_and_port_of_their_own_url() -> None:
    """Two servers on two ports, asked in turn through one pool: each request reaches the
    server its URL names, with its Host header, though the pool keeps what it parsed of each."""

    def answering(tag: bytes) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError):  # the pool closed it
                while head := await read_request(reader):
                    host = next(ln for ln in head.split(b"\r\n") if ln.startswith(b"Host: "))
                    body = tag + b" " + host[6:]
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))  # fmt: skip
                    await writer.drain()
            writer.close()

        return handler

    async def main() -> None:
        one, base_one = await serving(answering(b"one"))
        two, base_two = await serving(answering(b"two"))
        http = pool()
        try:
            for base, tag in [(base_one, b"one"), (base_two, b"two")] * 2:
                answer = await http.request("GET", f"{base}/x", {})
                assert await answer.read() == tag + b" " + base.split("//")[1].encode()
        finally:
            await http.aclose()
            await asyncio.sleep(0.1)
            one.close()
            two.close()

    asyncio.run(main())


def test_a_body_received_whole_or_in_parts_is_read_whole_and_its_connection_kept() -> None:
    """A Content-Length body already received whole with its head is taken at once, one that
    arrives later in parts is waited for; both leave the connection for the next request."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world")
        await writer.drain()
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b" there")
        await writer.drain()
        await read_request(reader)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with served(handler) as (base, http):
            whole = await http.request("GET", f"{base}/a", {})
            assert await whole.read() == b"hello world"
            parts = await http.request("GET", f"{base}/b", {})
            assert await parts.read() == b"hello there"
            empty = await http.request("GET", f"{base}/c", {})
            assert empty.status_code == 204 and await empty.read() == b""

    asyncio.run(main())
    assert connections == 1


@pytest.mark.parametrize("location", [b"http://127.0.0.1:99999/v", b"http://[::1/v"])
def test_a_redirect_to_a_url_urlsplit_refuses_is_an_api_error_not_a_crash(
    location: bytes,
) -> None:
    """A download redirected to a URL whose port is out of range or whose IPv6 host is not
    closed (a provider's or a mirror's mistake) is refused as the client refuses any URL it
    cannot send to: an ApiError the run reports, not a ValueError that ends it. The same for
    such a URL given as the video's own."""
    from reconciler.client import VeoClient
    from reconciler.config import ApiSettings
    from reconciler.errors import ApiError

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n"
                     % location)  # fmt: skip
        await writer.drain()
        writer.close()

    async def sink(chunk: bytes) -> None:
        raise AssertionError("nothing is downloaded")

    async def main() -> None:
        server, base = await serving(handler)
        client = VeoClient(ApiSettings(base, base, "secret-key"), timeout=5.0)
        try:
            with pytest.raises(ApiError, match="download failed"):
                await client.download(f"{base}/v", None, sink)
            with pytest.raises(ApiError, match="download failed"):  # the provider's own URI
                await client.download(location.decode(), None, sink)
        finally:
            await client.aclose()
            server.close()

    asyncio.run(main())
