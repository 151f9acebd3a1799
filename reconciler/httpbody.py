"""An answer's body below the event loop: the failure of a connection once a request may have
been sent (``Broken``, one of ``http11``'s three), and a large Content-Length body read from the
socket itself by blocking calls on a thread (``RawBody``, made by ``http11.Response.raw``).

Why read a body on a thread: through asyncio's stream, a 256 MiB video cost an event-loop wake,
two copies (into the stream's buffer, out of it) and a hop to the thread that hashes and writes
it, per 256 KiB read; read on that thread into two reused buffers in turn, it costs a
``recv_into``.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Any

READ = 1 << 20  # the most one read hands up: a download moves in pieces of up to 1 MiB


class Broken(Exception):
    """The connection failed or the answer was malformed once the request may have been sent.
    Said as httpx named it (ReadTimeout, RemoteProtocolError, ...: RELIABILITY.md quotes them);
    ``detail`` says more, for tests and debugging."""

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(name)
        self.detail = detail


PROTOCOL = "RemoteProtocolError"


class RawBody:
    """The rest of a Content-Length body (``Response.raw``), read by ``pour`` on a thread."""

    def __init__(self, sock: Any, head: bytes, size: int, timeout: float) -> None:
        # A duplicate of the transport's socket, this body's own: a plain socket whichever loop
        # made the transport (uvloop's own socket object can neither be read nor shut down).
        # Shut by ``abort``, closed by ``close``; ``pour`` reads a duplicate of its own.
        self._sock = sock
        self._head = head  # what the stream had read of the body already
        self.size = size
        self._timeout = timeout
        self.whole = False

    def pour(self, write: Callable[[memoryview], object]) -> int:
        """Hand the body's bytes to ``write`` in order, as read into two buffers in turn: a
        view is not read into again before the next call of ``write`` has returned (so ``write``
        may go on hashing it on another thread until then, while the next read comes in).
        Blocking: run it on a thread. The size, or Broken as the stream's reads fail (a
        connection closed short, a read past the timeout)."""
        head, self._head = self._head, b""
        if head:
            write(memoryview(head))
        left = self.size - len(head)
        if left:
            views = [memoryview(bytearray(min(left, READ))) for _ in range(2)]
            with self._sock.dup() as sock:  # closed by this thread: no fd reused under it
                sock.settimeout(self._timeout)
                while left:
                    view = views.pop(0)
                    views.append(view)
                    try:
                        got = sock.recv_into(view, min(left, len(view)))
                    except TimeoutError as exc:
                        raise Broken("ReadTimeout") from exc
                    except OSError as exc:
                        raise Broken("ReadError", str(exc)) from exc
                    if not got:
                        raise Broken(PROTOCOL, f"the connection closed {left} bytes short of "
                                     f"{self.size}")  # fmt: skip
                    write(view[:got])
                    left -= got
        self.whole = True
        return self.size

    def abort(self) -> None:
        """Shut the connection (from the loop): a read blocked in ``pour`` returns now."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Let this body's duplicate go (the connection stays the transport's)."""
        self._sock.close()
