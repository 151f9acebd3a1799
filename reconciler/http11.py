"""A lean HTTP/1.1 client over asyncio streams: the client's polls, downloads and POSTs.

Why not httpx here: one request through httpx, httpcore, h11 and anyio cost about 0.9 ms of CPU
on the development machine even on a warm keep-alive connection, and an apply of 1,000 specs
makes over 4,000 of them: most of the run's CPU. These requests are plain (a GET or a JSON POST,
an answer framed by Content-Length or chunked), so reading the status line and headers by hand
and the body by its framing costs a few tens of microseconds instead. Whatever is not that simple
stays httpx's: the client falls back to it whenever a proxy is configured (``httpproxy``).

What it keeps of httpx's behaviour: TLS verified against certifi's roots (or ``SSL_CERT_FILE`` /
``SSL_CERT_DIR``, as httpx reads them), a connect timeout and a timeout on every read and write,
keep-alive connections reused per origin, no header sent that the caller did not give (plus Host
and Content-Length). Failures are told apart by when they happened, which is what ``wire``'s
tables need: ``ConnectFailed`` (nothing left this machine), ``Unsendable`` (refused before
sending), ``Broken`` (the connection failed once the request may have been written).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import SplitResult, quote, urlsplit

from .httpbody import PROTOCOL, READ, Broken, RawBody  # Broken: one of this module's failures

_HEX = re.compile(rb"[0-9A-Fa-f]+")
_PRINTABLE = "".join(chr(c) for c in range(33, 127))  # kept as they are in a request target
LIMIT = 1 << 20  # the stream's buffer: the longest header block, and the flow control's mark
RAW_MIN = READ  # a longer Content-Length body may be read off the event loop (``Response.raw``)
Origin = tuple[str, str, int]


class ConnectFailed(Exception):
    """No connection was made: nothing of the request left this machine. Said as httpx named
    it (ConnectError, ConnectTimeout): the messages users see stay the same."""


class Unsendable(Exception):
    """The request was refused before anything was sent (a URL this client cannot send to)."""


_tls: ssl.SSLContext | None = None


def tls_context() -> ssl.SSLContext:
    """httpx's default context: certificates verified, certifi's roots unless the environment
    names others. Made once, on the first https connection."""
    global _tls
    if _tls is None:
        if os.environ.get("SSL_CERT_FILE"):
            ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
        elif os.environ.get("SSL_CERT_DIR"):
            ctx = ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
        else:
            import certifi

            ctx = ssl.create_default_context(cafile=certifi.where())
        ctx.set_alpn_protocols(["http/1.1"])
        _tls = ctx
    return _tls


class _Conn:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.origin = origin

    def usable(self) -> bool:
        # Bytes waiting on an idle connection (a 408 sent before the server closed) would be
        # read as the next request's answer. StreamReader has no public way to ask.
        waiting = len(getattr(self.reader, "_buffer", b""))
        return not waiting and not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class Body:
    """What callers read of an answer, over its ``chunks``: the same for both pools."""

    content = b""

    def chunks(self) -> AsyncIterator[bytes]:
        raise NotImplementedError

    def raw(self) -> RawBody | None:
        """The body to be read with blocking calls on a thread, where it can be: see Response."""
        return None

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.chunks()]
        self.content = parts[0] if len(parts) == 1 else b"".join(parts)
        return self.content


class Response(Body):
    """An answer whose status and headers are read; the body is read with ``read`` or
    ``chunks``, after which the connection goes back to the pool (or is closed)."""

    def __init__(
        self, pool: Pool, conn: _Conn, status: int, headers: dict[str, str], *, bodiless: bool
    ) -> None:
        self.status_code = status
        self.headers = headers  # names in lower case; repeated headers joined with ", "
        self._pool = pool
        self._conn: _Conn | None = conn
        self._keep = "close" not in headers.get("connection", "").lower()
        self._length: int | None = None
        self._chunked = False
        self._raw: RawBody | None = None
        if bodiless:
            self._length = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif "content-length" in headers:
            try:
                self._length = int(headers["content-length"])
            except ValueError:
                raise Broken(PROTOCOL, f"Content-Length {headers['content-length']!r}") from None
            if self._length < 0:
                raise Broken(PROTOCOL, f"Content-Length {self._length}")
        else:
            self._keep = False  # the body runs to the connection's end

    async def read(self) -> bytes:
        """The whole body. One of known length already received whole (a poll's or a POST's
        answer, as a rule) is taken at once: no wait, so no timeout, and none of ``chunks``'s
        steps, which cost a third of a poll's CPU."""
        conn = self._conn
        if (
            conn is not None and self._length is not None and conn.reader.exception() is None
            and len(getattr(conn.reader, "_buffer", b"")) >= self._length
        ):  # fmt: skip
            self.content = await conn.reader.readexactly(self._length)  # returns at once
            self._conn = None
            self._pool.release(conn, keep=self._keep)
            return self.content
        return await super().read()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in pieces of at most ``READ`` bytes."""
        conn = self._conn
        assert conn is not None and self._raw is None, "the body was read already"
        read = self._pool.read
        try:
            if self._chunked:
                while size := await self._chunk_size(conn):
                    async for data in _exactly(read, conn, size):
                        yield data
                    if await read(conn.reader.readexactly(2)) != b"\r\n":
                        raise Broken(PROTOCOL, "a chunk did not end with CRLF")
                # Trailers, which nothing here uses; a connection closed among them reads b""
                # at once, forever: it must end the answer, not spin.
                while (line := await read(conn.reader.readline())) not in (b"\r\n", b"\n"):
                    if not line:
                        raise Broken(PROTOCOL, "the connection closed in the trailers")
            elif self._length is not None:
                async for data in _exactly(read, conn, self._length):
                    yield data
            else:
                while data := await read(conn.reader.read(READ)):
                    yield data
        except BaseException:
            self._drop()
            raise
        self._conn = None
        self._pool.release(conn, keep=self._keep)

    async def _chunk_size(self, conn: _Conn) -> int:
        line = await self._pool.read(conn.reader.readline())
        size = line.split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size):  # int(..., 16) would take "-1", "+5", "0x10" and "1_0"
            raise Broken(PROTOCOL, f"a bad chunk size: {line[:40]!r}")
        return int(size, 16)

    def raw(self) -> RawBody | None:
        """A large Content-Length body on a plain connection, to be read from the socket itself
        by ``RawBody.pour`` on a thread of the caller's (``httpbody`` says why); None for any
        other (TLS, chunked, to the connection's end, a small one): then ``chunks``. The
        stream's transport is paused meanwhile; ``aclose`` resumes it (or shuts it)."""
        conn = self._conn
        if conn is None or self._raw is not None or (self._length or 0) <= RAW_MIN:
            return None
        transport: Any = conn.writer.transport  # a socket transport: it pauses
        sock = transport.get_extra_info("socket")
        if sock is None or transport.is_closing() or transport.get_extra_info("ssl_object"):
            return None
        transport.pause_reading()
        buffered = conn.reader._buffer  # type: ignore[attr-defined]  # what the stream read
        head = bytes(buffered[: self._length])
        del buffered[: len(head)]
        self._raw = RawBody(sock.dup(), head, self._length or 0, self._pool.timeout)
        return self._raw

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def aclose(self) -> None:
        """Let the connection go without reading the rest of the body; a raw body read whole
        gives it back to the pool, one not read whole has its socket shut first (a read still
        blocked on its thread, a cancelled download's, returns at once)."""
        raw, self._raw = self._raw, None
        if raw is not None and raw.whole and self._conn is not None:
            raw.close()
            conn, self._conn = self._conn, None
            transport: Any = conn.writer.transport
            if not getattr(conn.reader, "_paused", False):  # else its next read resumes it
                transport.resume_reading()
            self._pool.release(conn, keep=self._keep)
            return
        if raw is not None:
            raw.abort()
            raw.close()
        self._drop()


async def _exactly(read: Any, conn: _Conn, size: int) -> AsyncIterator[bytes]:
    left = size
    while left:
        data = await read(conn.reader.read(min(left, READ)))
        if not data:
            raise Broken(PROTOCOL, f"the connection closed {left} bytes short of {size}")
        left -= len(data)
        yield data


class Pool:
    """Keep-alive connections per origin, at most ``keep`` of them idle; requests are not queued
    here (the caller bounds how many run at once)."""

    def __init__(self, *, timeout: float, connect_timeout: float, keep: int) -> None:
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.keep = keep
        self._idle: list[_Conn] = []
        self._origins: dict[tuple[str, str], tuple[Origin, str]] = {}

    async def read(self, awaitable: Any, what: str = "Read") -> Any:
        """One read (or a write's drain) within the timeout; every way it fails is a ``Broken``."""
        try:
            async with asyncio.timeout(self.timeout):
                return await awaitable
        except asyncio.IncompleteReadError:
            raise Broken(PROTOCOL, "the connection closed mid-answer") from None
        except (asyncio.LimitOverrunError, ValueError):
            raise Broken(PROTOCOL, "an answer's line or header block too long") from None
        except TimeoutError as exc:
            raise Broken(f"{what}Timeout") from exc
        except OSError as exc:
            raise Broken(f"{what}Error", str(exc)) from exc

    async def _connect(self, origin: Origin) -> _Conn:
        scheme, host, port = origin
        try:
            tls = tls_context() if scheme == "https" else None
        except (OSError, ValueError) as exc:  # a bad SSL_CERT_FILE: nothing can be sent
            raise Unsendable(f"TLS cannot be set up: {exc}") from None
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=host if tls else None, limit=LIMIT
                )
        except TimeoutError as exc:
            raise ConnectFailed("ConnectTimeout") from exc
        except OSError as exc:
            raise ConnectFailed("ConnectError") from exc
        return _Conn(reader, writer, origin)

    def _idle_for(self, origin: Origin) -> _Conn | None:
        while True:
            found = next((c for c in reversed(self._idle) if c.origin == origin), None)
            if found is None:
                return None
            self._idle.remove(found)
            if found.usable():
                return found
            found.close()

    def release(self, conn: _Conn, *, keep: bool) -> None:
        if keep and conn.usable() and len(self._idle) < self.keep:
            self._idle.append(conn)
        else:
            conn.close()

    async def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None = None,
        *,
        fresh: bool = False,
    ) -> Response:
        """Send one request and read the answer's head. ``fresh``: on a new connection, closed
        after the answer (the paid POST). A GET on a kept connection that the server closed
        while idle is sent again once on a new one: nothing was answered, nothing happened."""
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # a bad [IPv6] host (a redirect's, say)
            raise Unsendable(str(exc)) from None
        origin, host = self._origins.get((parts.scheme, parts.netloc)) or self._origin(parts)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not target.isascii() or " " in target:  # as httpx: percent-encoded, never refused
            target = quote(target, safe=_PRINTABLE)
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        if fresh:
            lines.append("Connection: close")
        flat = "".join(lines)
        if "\r" in flat or "\n" in flat or "\0" in flat:
            raise Unsendable("a header or the URL holds a line break")
        try:
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise Unsendable(
                "a header or the host holds a character HTTP/1.1 cannot carry"
            ) from None
        while True:
            conn = None if fresh else self._idle_for(origin)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(origin)
            try:
                conn.writer.write(head + body if body else head)
                transport = conn.writer.transport
                # Sent whole at once (a poll's few hundred bytes, as a rule): drain would return
                # at once, and its timeout cost as much as the rest of the write. A failed send
                # closes the transport: then drain raises what it was.
                if transport.is_closing() or transport.get_write_buffer_size():
                    await self.read(conn.writer.drain(), "Write")
                status, answer = await self._head(conn)
                bodiless = method == "HEAD" or status in (204, 304)
                response = Response(self, conn, status, answer, bodiless=bodiless)
            except Broken as exc:
                conn.close()
                closed = conn.reader.at_eof() or isinstance(exc.__cause__, ConnectionError)
                if reused and method == "GET" and closed:
                    continue  # closed by the server while idle: the request was never read
                raise
            except BaseException:
                conn.close()
                raise
            if fresh:
                response._keep = False
            return response

    def _origin(self, parts: SplitResult) -> tuple[Origin, str]:
        """Where a URL's requests go, and its Host header; kept per scheme and host as written
        (parsing them again cost a few microseconds a request)."""
        scheme = parts.scheme
        if scheme not in ("http", "https") or not parts.hostname:
            raise Unsendable(f"cannot send to {scheme or 'a URL without a scheme'}")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError as exc:
            raise Unsendable(str(exc)) from None
        if len(self._origins) >= 64:  # a daemon's redirects to ever new hosts stay bounded
            self._origins.clear()
        found = self._origins[scheme, parts.netloc] = (
            (scheme, parts.hostname, port), parts.netloc.rpartition("@")[2]
        )  # fmt: skip
        return found

    async def _head(self, conn: _Conn) -> tuple[int, dict[str, str]]:
        while True:
            raw = await self.read(conn.reader.readuntil(b"\r\n\r\n"))
            lines = raw.decode("latin-1").split("\r\n")
            version, _, rest = lines[0].partition(" ")
            code = rest[:3]
            if not version.startswith("HTTP/1.") or not code.isdigit():
                raise Broken(PROTOCOL, f"not an HTTP/1.1 answer: {lines[0][:60]!r}")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, sep, value = line.partition(":")
                    if not sep:
                        raise Broken(PROTOCOL, f"a malformed header line: {line[:60]!r}")
                    name, value = name.strip().lower(), value.strip()
                    headers[name] = f"{headers[name]}, {value}" if name in headers else value
            if not code.startswith("1"):  # 100 Continue and its kind come before the answer
                if version == "HTTP/1.0" and "keep-alive" not in headers.get("connection", ""):
                    headers["connection"] = "close"
                return int(code), headers

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
