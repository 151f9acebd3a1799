"""HTTP plumbing: threaded servers on real sockets, a request handler, the two error envelopes.

The client must be tested with its real HTTP stack, so the simulator serves real loopback sockets
with the standard library's ``http.server``; this module bends it to behave like the live service
under stress: keep-alive, chunked bodies, a body cut short, a connection dropped unanswered, a
server that stops promptly while clients still hold connections. The handler offers the few
primitives the endpoints compose (read the body, answer JSON, stream bytes, redirect, drop);
``serve`` and ``shut_down`` start and stop servers. What a request means is not decided here: the
handler passes itself to a ``Router`` (the Simulator, in simulator.py).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import socketserver
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

_MAX_BODY = 64 << 20
_CHUNK = 1 << 20  # a video leaves in slices of this (views, not copies): loopback-speed bodies
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_DEFAULT_MESSAGE = {
    400: "Request contains an invalid argument.",
    401: "Invalid signature",
    403: "Insufficient balance",
    404: "Requested entity was not found.",
    429: "You exceeded your current quota, please check your plan and billing details.",
    500: "Internal error encountered.",
    503: "The service is currently unavailable.",
}


def google_error(status: int, message: str | None = None) -> dict[str, Any]:
    """Google's error envelope: ``{"error": {"code", "message", "status"}}``."""
    msg = message or _DEFAULT_MESSAGE.get(status, "Error.")
    return {
        "error": {"code": status, "message": msg, "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}
    }


def gptproto_error(status: int, message: str | None = None) -> dict[str, Any]:
    """GPTProto's error envelope: ``{"error": {"message", "type": "<status>"}}``."""
    return {
        "error": {"message": message or _DEFAULT_MESSAGE.get(status, "Error."), "type": str(status)}
    }


class Router(Protocol):
    """What a server hands each request to."""

    log: bool  # one line per request on stderr

    def route(self, h: Handler) -> None: ...

    def connected(self) -> None:
        """A client opened a TCP connection (counted: a client should reuse its pool)."""
        ...


class Answered(Exception):
    """Raised after a response was sent early, to unwind the request's handling."""


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False  # stop() must never wait on a client that keeps its connection open
    # The listen backlog: socketserver's 5 drops the SYNs of a burst of fresh connections (50
    # POSTs at once), and each dropped one is retried by the client's kernel a second later.
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], router: Router, role: str) -> None:
        self.router = router
        self.role = role
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(addr, Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can stall without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return  # a client that went away is normal, not worth a traceback
        traceback.print_exc()

    def close_connections(self) -> None:
        with self.conns_lock:
            for conn in list(self.conns):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


class _Server6(Server):
    address_family = socket.AF_INET6


def serve(host: str, port: int, router: Router, role: str) -> tuple[Server, threading.Thread, str]:
    """Start a server on its own thread: the server, the thread and the base URL it answers at."""
    cls = _Server6 if ":" in host else Server
    server = cls((host, port), router, role)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name=f"veo-sim-{role}"
    )
    thread.daemon = True
    thread.start()
    shown = f"[{host}]" if ":" in host else host
    return server, thread, f"http://{shown}:{server.server_address[1]}"


def shut_down(servers: list[tuple[Server, threading.Thread]]) -> None:
    """Stop the servers, cutting any connection a client still holds open."""
    # Both servers notice the shutdown within one poll interval; wait for them together.
    stoppers = [threading.Thread(target=server.shutdown) for server, _ in servers]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join()
    for server, thread in servers:
        server.close_connections()
        server.server_close()
        thread.join(timeout=5)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "veo-sim/1"
    sys_version = ""
    timeout = 120  # an idle keep-alive connection is let go eventually

    server: Server

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes; without this, Nagle plus the client's
        # delayed ACK adds ~40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.conns_lock:
            self.server.conns.add(self.connection)
        self.server.router.connected()

    def finish(self) -> None:
        with self.server.conns_lock:
            self.server.conns.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    # Quiet by default; Simulator(log=True) gets one line per request from log_request.
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self._log(str(int(code)) if isinstance(code, int) else str(code))

    def _log(self, outcome: str) -> None:
        if self.server.router.log:
            # Only method, path and outcome: never the key, whether sent as header or query.
            path = re.sub(r"([?&]key=)[^&]*", r"\1<redacted>", self.path)
            sys.stderr.write(f"veo-sim {self.server.role}: {self.command} {path} -> {outcome}\n")

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        self._started = False
        self._body: bytes | None = None
        try:
            self.server.router.route(self)
        except Answered:
            pass
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            traceback.print_exc()  # a simulator bug: loud even when quiet
            self.close_connection = True
            if not self._started:
                with contextlib.suppress(OSError):
                    self.send_json(500, google_error(500, "simulator bug; see its stderr"))

    # -- primitives the simulator composes ------------------------------------------------------

    def read_body(self) -> bytes:
        if self._body is not None:
            return self._body
        try:
            if "chunked" in self.headers.get("transfer-encoding", "").lower():
                parts = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self._body = b"".join(parts)
            else:
                length = int(self.headers.get("content-length") or 0)
                if not 0 <= length <= _MAX_BODY:
                    raise ValueError(f"Request payload size {length} is out of range.")
                self._body = self.rfile.read(length)
        except ValueError as exc:
            # The rest of the stream cannot be framed: answer, then close.
            self.close_connection = True
            self.send_json(400, google_error(400, str(exc) or "Malformed request body."))
            raise Answered from None
        return self._body

    def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self._started = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def send_bytes(self, data: bytes, *, cut: bool = False) -> None:
        self._started = True
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        end = len(data) // 2 if cut else len(data)
        view = memoryview(data)
        for i in range(0, end, _CHUNK):
            self.wfile.write(view[i : min(i + _CHUNK, end)])
        if cut:  # the promised length never arrives: the client must notice the short body
            self.close_connection = True

    def send_redirect(self, location: str) -> None:
        self._started = True
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def drop(self) -> None:
        """Close without answering; unread request bytes make the kernel reset the connection."""
        self._started = True
        self.close_connection = True
        self._log("dropped")
