"""A local, faithful emulator of the Veo 3.1 API as GPTProto and Google's Gemini API serve it.

Generating real videos costs money and minutes, and the failures that matter most to a cost-safe
client (a POST whose answer never arrives, a download cut short, a redirect to another host, a
result filtered for safety, an expired file) cannot be produced on demand against the real
service. This module serves the same wire protocol (see shared/veo-api.md) over real loopback
sockets, so the client is tested with its real HTTP stack, the way moto stands in for AWS:
submit, poll and download endpoints with the documented JSON shapes and error envelopes, request
validation like the live API's, counters of what would have been paid, a recording of every
request, and faults injected per endpoint. Only the standard library is used, so the CLI can run
it as ``reconcile sim`` anywhere; a second process steers it through ``/_sim/`` endpoints.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import re
import secrets
import socket
import socketserver
import string
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from reconciler import mp4

MODELS = ("veo-3.1-generate-preview", "veo-3.1-fast-generate-preview")
ENDPOINTS = ("submit", "poll", "download")
_RESOLUTIONS = {"720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}
_EXTENSION_S = 7.0
_MAX_EXTENDED_S = 148.0
_MAX_BODY = 64 << 20
_CHUNK = 64 * 1024
_ID_ALPHABET = string.ascii_lowercase + string.digits
_METADATA_TYPE = "type.googleapis.com/google.cloud.aiplatform.v1beta1.GenerateVideoMetadata"
_WRAPPED_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse"
_FLAT_TYPE = "type.googleapis.com/google.cloud.aiplatform.v1beta1.GenerateVideoResponse"
_FILTER_REASON = (
    "Veo could not generate 1 videos based on the prompt provided. "
    "You will not be charged for this request. Try rephrasing the prompt."
)
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
_PARAMETERS = {
    "aspectRatio",
    "resolution",
    "durationSeconds",
    "personGeneration",
    "enhancePrompt",
    "negativePrompt",
    "seed",
    "numberOfVideos",
}

# Which fault kinds make sense where: answering kinds reply with an HTTP error, the drops close the
# connection unanswered, and the rest shape an accepted operation or a download.
_ANSWER_KINDS = {"http_error", "rate_limited", "server_error", "content_policy", "expired"}
_KINDS = {
    "submit": _ANSWER_KINDS - {"expired"}
    | {"drop_before_accept", "drop_after_accept", "filtered", "op_error", "slow", "stall"},
    "poll": _ANSWER_KINDS - {"expired"} | {"drop_before_accept", "drop_after_accept", "stall"},
    "download": _ANSWER_KINDS
    | {"drop_before_accept", "drop_after_accept", "cut_download", "redirect"},
}


@dataclass
class Fault:
    """One injected fault; build it with the helper functions below."""

    kind: str
    status: int | None = None
    message: str | None = None
    retry_after: float | None = None
    envelope: str = "google"
    latency: float | None = None  # only for kind "slow"


def http_error(
    status: int,
    message: str | None = None,
    *,
    retry_after: float | None = None,
    envelope: str = "google",
) -> Fault:
    return Fault("http_error", status, message, retry_after, envelope)


def rate_limited(retry_after: float | None = None, envelope: str = "google") -> Fault:
    return Fault("rate_limited", 429, None, retry_after, envelope)


def server_error(status: int = 503) -> Fault:
    return Fault("server_error", status)


def drop_before_accept() -> Fault:
    """Close the connection without reading the request or creating anything."""
    return Fault("drop_before_accept")


def drop_after_accept() -> Fault:
    """Submit: create and bill the operation, then close with no answer (the ambiguous case)."""
    return Fault("drop_after_accept")


def content_policy(envelope: str = "gptproto") -> Fault:
    """400 refusing the prompt on safety grounds; nothing is created."""
    msg = "Content policy violation: the prompt was blocked by safety filters"
    return Fault("content_policy", 400, msg, envelope=envelope)


def filtered() -> Fault:
    """Submit accepted; the operation ends done with raiMediaFilteredCount and no samples."""
    return Fault("filtered")


def op_error(
    code: int = 13, message: str = "Video generation failed due to an internal error."
) -> Fault:
    return Fault("op_error", code, message)


def slow(latency: float) -> Fault:
    """This operation takes `latency` seconds, whatever set_latency says."""
    return Fault("slow", latency=latency)


def stall(seconds: float) -> Fault:
    """Hold the answer back for `seconds` (submit: after creating and billing the operation)."""
    return Fault("stall", latency=seconds)


def cut_download() -> Fault:
    """Promise the full Content-Length, send half the body, close."""
    return Fault("cut_download")


def redirect() -> Fault:
    """302 to the same path on the redirect server, which serves without a key."""
    return Fault("redirect")


def expired() -> Fault:
    """This download answers 404 NOT_FOUND, as for a file past its 2 days."""
    return Fault("expired", 404, "Requested entity was not found.")


_BUILDERS: dict[str, Any] = {
    "http_error": http_error,
    "rate_limited": rate_limited,
    "server_error": server_error,
    "drop_before_accept": drop_before_accept,
    "drop_after_accept": drop_after_accept,
    "stall": stall,
    "content_policy": content_policy,
    "filtered": filtered,
    "op_error": op_error,
    "slow": slow,
    "cut_download": cut_download,
    "redirect": redirect,
    "expired": expired,
}


def fault_from_json(spec: dict[str, Any]) -> Fault:
    """The Fault a ``POST /_sim/faults`` body describes; defaults come from the kind's helper."""
    kind = spec.get("kind")
    if kind not in _BUILDERS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(sorted(_BUILDERS))}")
    if kind == "http_error":
        if not isinstance(spec.get("status"), int):
            raise ValueError("http_error needs an integer status")
        fault: Fault = http_error(spec["status"])
    elif kind == "slow":
        if not isinstance(spec.get("latency"), int | float):
            raise ValueError("slow needs a numeric latency")
        fault = slow(float(spec["latency"]))
    else:
        fault = _BUILDERS[kind]()
    for key in ("status", "message", "retry_after", "envelope", "latency"):
        if spec.get(key) is not None:
            setattr(fault, key, spec[key])
    if spec.get("code") is not None:  # op_error's google.rpc code, by its own name
        fault.status = int(spec["code"])
    return fault


@dataclass
class RecordedRequest:
    method: str
    host: str  # the address the receiving socket was bound to
    path: str
    query: str  # raw query string, "" when absent
    headers: dict[str, str]  # lower-case names
    json: Any | None
    time: float  # time.monotonic()


@dataclass
class SimOperation:
    id: str
    name: str
    model: str
    request: dict[str, Any]
    prompt: str
    created: float  # time.monotonic()
    latency: float
    latency_fixed: bool = False  # set by a slow() fault: set_latency leaves it alone
    outcome: str = "success"  # success | filtered | error
    error: dict[str, Any] | None = None
    done_shape: str = "wrapped"
    file_id: str | None = None
    width: int = 1280
    height: int = 720
    duration_s: float = 8.0
    video_size: int = 48 * 1024
    create_time: str = ""
    _video: bytes | None = field(default=None, repr=False)

    @property
    def finished_at(self) -> float:
        return self.created + self.latency

    @property
    def done(self) -> bool:
        return time.monotonic() >= self.finished_at

    @property
    def state(self) -> str:
        """running, then succeeded, filtered or failed."""
        if not self.done:
            return "running"
        return {"success": "succeeded", "filtered": "filtered"}.get(self.outcome, "failed")

    @property
    def video(self) -> bytes | None:
        if self.outcome != "success":
            return None
        if self._video is None:  # made on first use: a large video_size should not slow submit
            self._video = mp4.make_mp4(
                duration_s=self.duration_s,
                width=self.width,
                height=self.height,
                seed=self.id.encode(),
                size=self.video_size,
            )
        return self._video


@dataclass
class _File:
    op_id: str
    touched: float | None = None  # last time a video-to-video request referenced it
    deleted: bool = False


@dataclass
class _Pending:
    fault: Fault
    remaining: int
    prompt_contains: str | None


@dataclass
class _Plan:
    """What an accepted submission will produce."""

    width: int
    height: int
    duration_s: float
    source_file: str | None = None


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


class _Answered(Exception):
    """Raised after a response was sent early, to unwind the request's handling."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False  # stop() must never wait on a client that keeps its connection open

    def __init__(self, addr: tuple[str, int], sim: Simulator, role: str) -> None:
        self.sim = sim
        self.role = role
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(addr, _Handler)

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


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "veo-sim/1"
    sys_version = ""
    timeout = 120  # an idle keep-alive connection is let go eventually

    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes; without this, Nagle plus the client's
        # delayed ACK adds ~40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.conns_lock:
            self.server.conns.add(self.connection)

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
        if self.server.sim.log:
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
            self.server.sim._route(self)
        except _Answered:
            pass
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            traceback.print_exc()  # a simulator bug: loud even when quiet
            self.close_connection = True
            if not self._started:
                with contextlib.suppress(OSError):
                    self.send_json(500, _google_error(500, "simulator bug; see its stderr"))

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
            self.send_json(400, _google_error(400, str(exc) or "Malformed request body."))
            raise _Answered from None
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
        for i in range(0, end, _CHUNK):
            self.wfile.write(data[i : min(i + _CHUNK, end)])
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


def _google_error(status: int, message: str | None = None) -> dict[str, Any]:
    msg = message or _DEFAULT_MESSAGE.get(status, "Error.")
    return {
        "error": {"code": status, "message": msg, "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}
    }


def _gptproto_error(status: int, message: str | None = None) -> dict[str, Any]:
    return {
        "error": {"message": message or _DEFAULT_MESSAGE.get(status, "Error."), "type": str(status)}
    }


class Simulator:
    """The emulated service: start() it, point the client at base_url, inspect what it saw."""

    def __init__(
        self,
        *,
        api_key: str | None = "sim-key",
        latency: float = 2.0,
        host: str = "127.0.0.1",
        port: int = 0,
        redirect_host: str | None = None,
        video_size: int = 48 * 1024,
        name_form: str = "models",
        done_shape: str = "wrapped",
        omit_done: bool = False,
        file_ttl: float | None = None,
        log: bool = False,
        foreign_sources: bool = False,
    ) -> None:
        if name_form not in ("models", "operations", "mixed"):
            raise ValueError(f"name_form must be models, operations or mixed, not {name_form!r}")
        if done_shape not in ("wrapped", "flat", "mixed"):
            raise ValueError(f"done_shape must be wrapped, flat or mixed, not {done_shape!r}")
        self.api_key = api_key
        self.latency = latency
        self.host = host
        self.port = port
        self.redirect_host = redirect_host
        self.video_size = video_size
        self.name_form = name_form
        self.done_shape = done_shape
        self.omit_done = omit_done
        self.file_ttl = file_ttl
        self.log = log
        # `apply --sim` on real specs: a video-to-video source this sim never made is taken as an
        # 8 s 720p clip instead of refused, so every example spec runs in the sandbox.
        self.foreign_sources = foreign_sources
        self.paid_posts = 0
        self.post_requests = 0
        self.polls = 0
        self.downloads = 0
        self.requests: list[RecordedRequest] = []
        self.redirect_requests: list[RecordedRequest] = []
        self.operations: dict[str, SimOperation] = {}
        self._files: dict[str, _File] = {}
        self._faults: dict[str, list[_Pending]] = {e: [] for e in ENDPOINTS}
        self._lock = threading.RLock()
        self._servers: list[tuple[_Server, threading.Thread]] = []
        self._base_url: str | None = None
        self._redirect_base_url: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def _serve(self, host: str, port: int, role: str) -> str:
        cls = _Server6 if ":" in host else _Server
        server = cls((host, port), self, role)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name=f"veo-sim-{role}"
        )
        thread.daemon = True
        thread.start()
        self._servers.append((server, thread))
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{server.server_address[1]}"

    def start(self) -> Simulator:
        if self._servers:
            return self
        self._base_url = self._serve(self.host, self.port, "main")
        if self.redirect_host is not None:
            self._redirect_base_url = self._serve(self.redirect_host, 0, "redirect")
        return self

    def stop(self) -> None:
        servers, self._servers = self._servers, []
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

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("Simulator not started")
        return self._base_url

    @property
    def redirect_base_url(self) -> str | None:
        return self._redirect_base_url

    # -- test controls ------------------------------------------------------------------------

    def inject(
        self, endpoint: str, fault: Fault, *, times: int = 1, prompt_contains: str | None = None
    ) -> None:
        """Apply ``fault`` to the next ``times`` matching requests to ``endpoint``, in order."""
        if endpoint not in _KINDS:
            raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}, not {endpoint!r}")
        if fault.kind not in _KINDS[endpoint]:
            raise ValueError(f"fault {fault.kind!r} does not apply to {endpoint}")
        if fault.kind == "redirect" and self.redirect_host is None:
            raise ValueError("redirect() needs Simulator(redirect_host=...)")
        if fault.kind == "slow" and fault.latency is None:
            raise ValueError("slow fault needs a latency")
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults[endpoint].append(_Pending(fault, times, prompt_contains))

    def posts_for(self, prompt_substring: str) -> int:
        with self._lock:
            return sum(prompt_substring in op.prompt for op in self.operations.values())

    def served_bytes(self, file_id: str) -> bytes:
        with self._lock:
            op = self.operations[self._files[file_id].op_id]
        video = op.video
        assert video is not None
        return video

    def expire_files(self) -> None:
        with self._lock:
            for f in self._files.values():
                f.deleted = True

    def set_latency(self, seconds: float) -> None:
        """New latency for future operations and for running ones not slowed by a fault."""
        with self._lock:
            self.latency = seconds
            for op in self.operations.values():
                if not op.latency_fixed:
                    op.latency = seconds

    def stats(self) -> dict[str, Any]:
        with self._lock:
            ops = [
                {
                    "id": o.id,
                    "name": o.name,
                    "model": o.model,
                    "prompt": o.prompt,
                    "state": o.state,
                    "file_id": o.file_id if o.done else None,
                }
                for o in self.operations.values()
            ]
            return {
                "paid_posts": self.paid_posts,
                "post_requests": self.post_requests,
                "polls": self.polls,
                "downloads": self.downloads,
                "operations": ops,
            }

    # -- internals ----------------------------------------------------------------------------

    def _take(self, endpoint: str, prompt: str | None, *, consume: bool = True) -> _Pending | None:
        with self._lock:
            for p in self._faults[endpoint]:
                if p.prompt_contains is None or (
                    prompt is not None and p.prompt_contains in prompt
                ):
                    if consume:
                        self._consume(p)
                    return p
            return None

    def _consume(self, pending: _Pending) -> bool:
        with self._lock:
            if pending.remaining <= 0:
                return False  # another connection used it up between peek and consume
            pending.remaining -= 1
            if pending.remaining == 0:
                for lst in self._faults.values():
                    if pending in lst:
                        lst.remove(pending)
            return True

    def _record(self, h: _Handler, body: Any | None, redirect_server: bool = False) -> None:
        headers: dict[str, str] = {}
        for k, v in h.headers.items():
            k = k.lower()
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        split = urlsplit(h.path)
        rec = RecordedRequest(
            method=h.command,
            host=str(h.server.server_address[0]),
            path=unquote(split.path),
            query=split.query,
            headers=headers,
            json=body,
            time=time.monotonic(),
        )
        with self._lock:
            (self.redirect_requests if redirect_server else self.requests).append(rec)

    def _file_op(self, file_id: str) -> SimOperation | None:
        """The finished operation behind a file that can still be served, else None."""
        with self._lock:
            f = self._files.get(file_id)
            op = self.operations.get(f.op_id) if f else None
            if f is None or op is None or not op.done or f.deleted:
                return None
            if self.file_ttl is not None:
                since = max(op.finished_at, f.touched or 0.0)
                if time.monotonic() - since > self.file_ttl:
                    return None
            return op

    def _answer_fault(self, h: _Handler, fault: Fault) -> None:
        status = fault.status or 500
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(max(0, math.ceil(fault.retry_after)))
        if fault.envelope == "gptproto":
            h.send_json(status, _gptproto_error(status, fault.message), headers)
        else:
            h.send_json(status, _google_error(status, fault.message), headers)

    def _route(self, h: _Handler) -> None:
        split = urlsplit(h.path)
        path = unquote(split.path)
        if h.server.role == "redirect":
            self._redirected_download(h, path)
            return
        if path.startswith("/_sim/"):
            self._control(h, path)
            return
        if h.command == "POST":
            with self._lock:
                self.post_requests += 1
        m_submit = re.fullmatch(r"/v1beta/models/([^/:]+):predictLongRunning", path)
        m_poll = re.fullmatch(r"/v1beta/(?:models/([^/:]+)/)?operations/([^/:]+)", path)
        m_file = re.fullmatch(r"(?:/upload)?/v1beta/files/([^/:]+):download", path)
        if h.command == "POST" and m_submit:
            self._submit(h, m_submit.group(1))
        elif h.command == "GET" and m_poll:
            self._poll(h, m_poll.group(1), m_poll.group(2))
        elif h.command == "GET" and m_file:
            self._download(h, m_file.group(1), split.query)
        else:
            h.read_body()
            self._record(h, None)
            h.send_json(404, _google_error(404, f"Method not found: {h.command} {path}"))

    def _authorized(self, h: _Handler) -> bool:
        if self.api_key is None or h.headers.get("x-goog-api-key") == self.api_key:
            return True
        h.send_json(401, _gptproto_error(401, "Invalid signature"))
        return False

    def _submit(self, h: _Handler, model: str) -> None:
        if self.api_key is not None and h.headers.get("x-goog-api-key") != self.api_key:
            self._record(h, _json_or_none(h.read_body()))  # read, so keep-alive stays in step
            self._authorized(h)
            return
        with self._lock:
            first = self._faults["submit"][0] if self._faults["submit"] else None
            needs_prompt = any(p.prompt_contains for p in self._faults["submit"])
        drop_now = first and first.fault.kind == "drop_before_accept" and not needs_prompt
        if drop_now and first and self._consume(first):
            self._record(h, None)
            h.drop()
            return
        body = _json_or_none(h.read_body())
        self._record(h, body)
        if model not in MODELS:
            msg = (
                f"models/{model} is not found for API version v1beta, or is not supported for "
                "predictLongRunning. Call ListModels to see the list of available models."
            )
            h.send_json(404, _google_error(404, msg))
            return
        if body is None:
            h.send_json(400, _google_error(400, "Invalid JSON payload received."))
            return
        prompt = _prompt_of(body)
        pending = self._take("submit", prompt, consume=False)
        fault = pending.fault if pending else None
        if (
            pending
            and fault
            and (fault.kind in _ANSWER_KINDS or fault.kind == "drop_before_accept")
        ):
            if self._consume(pending):
                if fault.kind == "drop_before_accept":
                    h.drop()
                else:
                    self._answer_fault(h, fault)
                return
            fault = None
        plan = self._validate(body)
        if isinstance(plan, str):
            h.send_json(400, _google_error(400, plan))
            return
        if pending and fault and not self._consume(pending):
            fault = None
        op = self._create(model, body, prompt or "", plan, fault)
        if fault and fault.kind == "drop_after_accept":
            h.drop()
            return
        if fault and fault.kind == "stall":
            time.sleep(fault.latency or 0.0)
        answer: dict[str, Any] = {"name": op.name}
        if op.name.startswith("operations/"):
            answer["metadata"] = {"@type": _METADATA_TYPE, "createTime": op.create_time}
        h.send_json(200, answer)

    def _create(
        self, model: str, body: dict[str, Any], prompt: str, plan: _Plan, fault: Fault | None
    ) -> SimOperation:
        with self._lock:
            op_id = _new_id()
            while op_id in self.operations:
                op_id = _new_id()
            n = len(self.operations)
            form = self.name_form if self.name_form != "mixed" else ("models", "operations")[n % 2]
            shape = self.done_shape if self.done_shape != "mixed" else ("wrapped", "flat")[n % 2]
            op = SimOperation(
                id=op_id,
                name=f"models/{model}/operations/{op_id}"
                if form == "models"
                else f"operations/{op_id}",
                model=model,
                request=body,
                prompt=prompt,
                created=time.monotonic(),
                latency=self.latency,
                done_shape=shape,
                width=plan.width,
                height=plan.height,
                duration_s=plan.duration_s,
                video_size=self.video_size,
                create_time=_now_rfc3339(),
            )
            kind = fault.kind if fault else None
            if kind == "slow" and fault is not None and fault.latency is not None:
                op.latency, op.latency_fixed = fault.latency, True
            if kind == "filtered":
                op.outcome = "filtered"
            elif kind == "op_error" and fault is not None:
                op.outcome = "error"
                op.error = {
                    "code": fault.status or 13,
                    "message": fault.message or "Internal error.",
                }
            else:
                op.file_id = _new_id()
                self._files[op.file_id] = _File(op_id)
            if plan.source_file is not None:
                self._files[plan.source_file].touched = time.monotonic()
            self.operations[op_id] = op
            self.paid_posts += 1
            return op

    def _validate(self, body: Any) -> _Plan | str:
        """The plan for a submission, or the message of the 400 the live API would give."""
        if not isinstance(body, dict):
            return "Invalid JSON payload received. Expected an object."
        unknown = set(body) - {"instances", "parameters"}
        if unknown:
            return f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}": Cannot find field.'
        instances = body.get("instances")
        if (
            not isinstance(instances, list)
            or len(instances) != 1
            or not isinstance(instances[0], dict)
        ):
            return "instances must be a list holding exactly one instance object."
        inst = instances[0]
        for key in inst:
            if key not in ("prompt", "image", "video", "lastFrame", "referenceImages"):
                return f"Invalid JSON payload received. Unknown name \"{key}\" at 'instances[0]'."
        prompt = inst.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return "instances[0].prompt is required and must be a non-empty string."
        params = body.get("parameters", {})
        if not isinstance(params, dict):
            return "parameters must be an object."
        for key in params:
            if key not in _PARAMETERS:
                return (
                    f"Unknown parameter {key!r} (parameter names are camelCase, e.g. aspectRatio)."
                )
        image, video = inst.get("image"), inst.get("video")
        if image is not None and video is not None:
            return "image and video cannot be used together: give one of them, or neither."
        for key in ("image", "lastFrame"):
            err = _check_image(inst[key], key) if inst.get(key) is not None else None
            if err:
                return err
        if not isinstance(inst.get("referenceImages", []), list):
            return "referenceImages must be a list."
        aspect = params.get("aspectRatio", "16:9")
        if aspect not in ("16:9", "9:16"):
            return f"aspectRatio must be 16:9 or 9:16, not {aspect!r}."
        resolution = params.get("resolution", "720p")
        if resolution not in _RESOLUTIONS:
            return f"resolution must be one of 720p, 1080p, 4k, not {resolution!r}."
        duration = params.get("durationSeconds")
        if duration is not None:
            if isinstance(duration, bool) or not isinstance(duration, int | float):
                return "The value type for durationSeconds needs to be a number."
            if duration not in (4, 6, 8):
                return f"durationSeconds must be 4, 6 or 8, not {duration}."
        if resolution != "720p" and duration not in (None, 8):
            return f"resolution {resolution} is only supported with durationSeconds 8."
        if params.get("personGeneration", "allow_all") not in ("allow_all", "allow_adult"):
            return "personGeneration must be allow_all or allow_adult."
        if not isinstance(params.get("enhancePrompt", True), bool):
            return "enhancePrompt must be a boolean."
        if not isinstance(params.get("negativePrompt", ""), str):
            return "negativePrompt must be a string."
        if params.get("numberOfVideos", 1) != 1:
            return "numberOfVideos must be 1 for this model."
        width, height = _RESOLUTIONS[resolution]
        if video is None:
            if aspect == "9:16":
                width, height = height, width
            return _Plan(width, height, float(duration or 8))
        return self._plan_extension(video, params, resolution, duration)

    def _plan_extension(
        self, video: Any, params: dict[str, Any], resolution: str, duration: Any
    ) -> _Plan | str:
        if (
            not isinstance(video, dict)
            or not isinstance(video.get("uri"), str)
            or set(video) - {"uri"}
        ):
            return (
                "video must be an object holding only uri, the download URI of a generated video."
            )
        if resolution != "720p":
            return "Video extension only supports resolution 720p."
        if duration not in (None, 8):
            return "Video extension only supports durationSeconds 8."
        m = re.search(r"/files/([^/:?]+):download", video["uri"])
        source = self._file_op(m.group(1)) if m else None
        if source is None and self.foreign_sources:
            width, height = _RESOLUTIONS["720p"]
            if params.get("aspectRatio") == "9:16":
                width, height = height, width
            return _Plan(width, height, 8.0 + _EXTENSION_S)
        if m is None or source is None:
            return (
                f"video.uri {video['uri']!r} does not name a video generated by this service in "
                "the last 2 days."
            )
        total = source.duration_s + _EXTENSION_S
        if total > _MAX_EXTENDED_S:
            return f"The video cannot be extended beyond {_MAX_EXTENDED_S:g} seconds."
        width, height = _RESOLUTIONS["720p"]
        portrait = (
            params.get("aspectRatio", "9:16" if source.height > source.width else "16:9") == "9:16"
        )
        if portrait:
            width, height = height, width
        return _Plan(width, height, total, source_file=m.group(1))

    def _poll(self, h: _Handler, model: str | None, op_id: str) -> None:
        with self._lock:
            self.polls += 1
            op = self.operations.get(op_id)
        h.read_body()
        self._record(h, None)
        if not self._authorized(h):
            return
        pending = self._take("poll", op.prompt if op else None)
        if pending and pending.fault.kind == "stall":
            time.sleep(pending.fault.latency or 0.0)  # then answer as usual
            pending = None
        if pending:
            if pending.fault.kind in _ANSWER_KINDS:
                self._answer_fault(h, pending.fault)
            else:
                h.drop()
            return
        if op is None or (model is not None and model != op.model):
            shown = f"models/{model}/operations/{op_id}" if model else f"operations/{op_id}"
            h.send_json(404, _google_error(404, f"Operation {shown} not found."))
            return
        h.send_json(200, self._operation_body(op))

    def _operation_body(self, op: SimOperation) -> dict[str, Any]:
        meta = {"@type": _METADATA_TYPE, "createTime": op.create_time, "updateTime": _now_rfc3339()}
        if not op.done:
            running: dict[str, Any] = {"name": op.name, "metadata": meta}
            if not self.omit_done:
                running["done"] = False
            return running
        out: dict[str, Any] = {"name": op.name, "done": True}
        if op.outcome == "error":
            out["error"] = op.error
            return out
        wrapped = op.done_shape == "wrapped"
        if op.outcome == "filtered":
            result: dict[str, Any] = {
                "raiMediaFilteredCount": 1,
                "raiMediaFilteredReasons": [_FILTER_REASON],
            }
        else:
            prefix = "/upload" if wrapped else ""
            uri = f"{self.base_url}{prefix}/v1beta/files/{op.file_id}:download?alt=media"
            video: dict[str, Any] = {"uri": uri}
            if wrapped:
                video["encoding"] = "video/mp4"
            result = {"generatedSamples": [{"video": video}]}
        if wrapped:
            out["response"] = {"@type": _WRAPPED_TYPE, "generateVideoResponse": result}
        else:
            out["metadata"] = meta
            out["response"] = {"@type": _FLAT_TYPE, **result}
        return out

    def _download(self, h: _Handler, file_id: str, query: str) -> None:
        with self._lock:
            self.downloads += 1
            f = self._files.get(file_id)
            prompt = self.operations[f.op_id].prompt if f else None
        h.read_body()
        self._record(h, None)
        if not self._authorized(h):
            return
        pending = self._take("download", prompt)
        kind = pending.fault.kind if pending else None
        if pending and kind in _ANSWER_KINDS:
            self._answer_fault(h, pending.fault)
            return
        if kind in ("drop_before_accept", "drop_after_accept"):
            h.drop()
            return
        if parse_qs(query).get("alt") != ["media"]:
            h.send_json(400, _google_error(400, "Downloading file content needs alt=media."))
            return
        op = self._file_op(file_id)
        video = op.video if op else None
        if video is None:
            h.send_json(404, _google_error(404, "Requested entity was not found."))
            return
        if kind == "redirect":
            h.send_redirect(f"{self._redirect_base_url}{urlsplit(h.path).path}?{query}")
            return
        h.send_bytes(video, cut=kind == "cut_download")

    def _redirected_download(self, h: _Handler, path: str) -> None:
        # Storage behind a redirect takes no API key: it records what the client sent anyway.
        h.read_body()
        self._record(h, None, redirect_server=True)
        m = re.fullmatch(r"(?:/upload)?/v1beta/files/([^/:]+):download", path)
        op = self._file_op(m.group(1)) if m and h.command == "GET" else None
        video = op.video if op else None
        if video is None:
            h.send_json(404, _google_error(404, "Requested entity was not found."))
            return
        h.send_bytes(video)

    def _control(self, h: _Handler, path: str) -> None:
        raw = h.read_body()
        try:
            if h.command == "GET" and path == "/_sim/stats":
                h.send_json(200, self.stats())
            elif h.command == "POST" and path == "/_sim/faults":
                spec = json.loads(raw or b"{}")
                if not isinstance(spec, dict):
                    raise ValueError("body must be a JSON object")
                fault = fault_from_json(spec)
                times = spec.get("times", 1)
                self.inject(
                    str(spec.get("endpoint")),
                    fault,
                    times=int(times),
                    prompt_contains=spec.get("prompt_contains"),
                )
                h.send_json(200, {"ok": True, "fault": asdict(fault), "times": times})
            elif h.command == "POST" and path == "/_sim/expire_files":
                self.expire_files()
                h.send_json(200, {"ok": True})
            elif h.command == "POST" and path == "/_sim/latency":
                spec = json.loads(raw or b"{}")
                self.set_latency(float(spec["seconds"]))
                h.send_json(200, {"ok": True, "latency": self.latency})
            else:
                h.send_json(404, {"error": f"no control endpoint {h.command} {path}"})
        except (ValueError, KeyError, TypeError) as exc:
            h.send_json(400, {"error": str(exc)})


def _json_or_none(raw: bytes) -> Any | None:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _prompt_of(body: Any) -> str | None:
    try:
        prompt = body["instances"][0]["prompt"]
    except (KeyError, IndexError, TypeError):
        return None
    return prompt if isinstance(prompt, str) else None


def _check_image(image: Any, key: str = "image") -> str | None:
    if isinstance(image, dict) and "inlineData" in image:
        return "inlineData isn't supported by this model. Use bytesBase64Encoded and mimeType."
    if not isinstance(image, dict) or set(image) != {"bytesBase64Encoded", "mimeType"}:
        return f"{key} must be an object with exactly bytesBase64Encoded and mimeType."
    if image["mimeType"] not in ("image/png", "image/jpeg"):
        return f"{key}.mimeType must be image/png or image/jpeg, not {image['mimeType']!r}."
    data = image["bytesBase64Encoded"]
    try:
        decoded = base64.b64decode(data, validate=True) if isinstance(data, str) else b""
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded:
        return f"{key}.bytesBase64Encoded must be non-empty base64 data."
    return None
