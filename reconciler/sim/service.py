"""The emulated service's state: operations, files, counters, recordings and queued faults.

Tests judge a client by what the service saw and what it would have billed, so this is where
that is kept: every accepted operation and the file it produces, the counters (``paid_posts``,
``post_requests``, ``polls``, ``downloads``), a recording of every request, and the faults waiting
for their request. ``Service`` also holds the test controls (``inject``, ``set_latency``,
``expire_files``…); the JSON bodies of operations are plain functions of an operation. Nothing
here knows of sockets: simulator.py reads each request, calls in here (each call one step under
one lock) and writes the answer.
"""

from __future__ import annotations

import logging
import secrets
import string
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler import mp4
from reconciler.facts import DEFAULT_DURATION, DEFAULT_RESOLUTION, frame_size

from . import video as clips
from .faults import ENDPOINTS, KINDS, Fault
from .rules import Plan

_ID_ALPHABET = string.ascii_lowercase + string.digits
_METADATA_TYPE = "type.googleapis.com/google.cloud.aiplatform.v1beta1.GenerateVideoMetadata"
_WRAPPED_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse"
_FLAT_TYPE = "type.googleapis.com/google.cloud.aiplatform.v1beta1.GenerateVideoResponse"
_FILTER_REASON = (
    "Veo could not generate 1 videos based on the prompt provided. "
    "You will not be charged for this request. Try rephrasing the prompt."
)
_DEFAULT_WIDTH, _DEFAULT_HEIGHT = frame_size(DEFAULT_RESOLUTION)
STANDIN_SIZE = 48 * 1024  # a stand-in clip's size unless video_size says otherwise
VIDEO_MODES = ("real", "standin")
_log = logging.getLogger("reconciler.sim")


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
    width: int = _DEFAULT_WIDTH
    height: int = _DEFAULT_HEIGHT
    duration_s: float = float(DEFAULT_DURATION)
    playable: bool = False  # a real encoded clip (video.py), else a stand-in of video_size bytes
    video_size: int = STANDIN_SIZE
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
        if self._video is not None:
            return self._video
        if self.playable:
            # Same request, same pixels (encoded once); the tag keeps every operation's bytes apart.
            picture = clips.clip(
                width=self.width,
                height=self.height,
                duration_s=self.duration_s,
                title=self.prompt,
                note=f"#{clips.digest(self.prompt)}",
            )
            self._video = clips.tagged(picture, f"operation {self.id}")
        else:  # made on first use: a large video_size should not slow submit
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
class Pending:
    """A fault waiting in its endpoint's queue for `remaining` more matching requests."""

    fault: Fault
    remaining: int
    prompt_contains: str | None


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


def accepted_body(op: SimOperation) -> dict[str, Any]:
    """Submit's answer; GPTProto's operations/{id} form also carries the createTime."""
    answer: dict[str, Any] = {"name": op.name}
    if op.name.startswith("operations/"):
        answer["metadata"] = {"@type": _METADATA_TYPE, "createTime": op.create_time}
    return answer


def operation_body(op: SimOperation, *, base_url: str, omit_done: bool) -> dict[str, Any]:
    """The poll answer: running, or done with samples, a filtered result, or an error."""
    meta = {"@type": _METADATA_TYPE, "createTime": op.create_time, "updateTime": _now_rfc3339()}
    if not op.done:
        running: dict[str, Any] = {"name": op.name, "metadata": meta}
        if not omit_done:
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
        uri = f"{base_url}{prefix}/v1beta/files/{op.file_id}:download?alt=media"
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


class Service:
    """What the emulated service holds; Simulator serves it over HTTP."""

    def __init__(
        self,
        *,
        latency: float,
        video: str | None,
        video_size: int | None,
        name_form: str,
        done_shape: str,
        omit_done: bool,
        file_ttl: float | None,
        foreign_sources: bool,
        redirects: bool,
    ) -> None:
        if name_form not in ("models", "operations", "mixed"):
            raise ValueError(f"name_form must be models, operations or mixed, not {name_form!r}")
        if done_shape not in ("wrapped", "flat", "mixed"):
            raise ValueError(f"done_shape must be wrapped, flat or mixed, not {done_shape!r}")
        self.latency = latency
        self.video = _video_mode(video, video_size)
        self.video_size = STANDIN_SIZE if video_size is None else video_size
        # Real clips are encoded while the operation "runs", one at a time (x264 uses every core),
        # so a download rarely waits; started on the first real operation.
        self._encoder: ThreadPoolExecutor | None = None
        self.name_form = name_form
        self.done_shape = done_shape
        self.omit_done = omit_done
        self.file_ttl = file_ttl
        # `apply --sim` on real specs: a video-to-video source this sim never made is taken as an
        # 8 s 720p clip instead of refused, so every example spec runs in the sandbox.
        self.foreign_sources = foreign_sources
        self._redirects = redirects  # whether a redirect server exists for redirect() faults
        self.paid_posts = 0
        self.post_requests = 0
        self.polls = 0
        self.downloads = 0
        self.connections = 0  # TCP connections accepted, by either server
        self.requests: list[RecordedRequest] = []
        self.redirect_requests: list[RecordedRequest] = []
        self.operations: dict[str, SimOperation] = {}
        self._files: dict[str, _File] = {}
        self._faults: dict[str, list[Pending]] = {e: [] for e in ENDPOINTS}
        # One lock for all of it: request threads and test controls read and write together.
        self._lock = threading.RLock()

    # -- test controls ------------------------------------------------------------------------

    def inject(
        self, endpoint: str, fault: Fault, *, times: int = 1, prompt_contains: str | None = None
    ) -> None:
        """Apply ``fault`` to the next ``times`` matching requests to ``endpoint``, in order."""
        if endpoint not in KINDS:
            raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}, not {endpoint!r}")
        if fault.kind not in KINDS[endpoint]:
            raise ValueError(f"fault {fault.kind!r} does not apply to {endpoint}")
        if fault.kind == "redirect" and not self._redirects:
            raise ValueError("redirect() needs Simulator(redirect_host=...)")
        if fault.kind == "slow" and fault.latency is None:
            raise ValueError("slow fault needs a latency")
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults[endpoint].append(Pending(fault, times, prompt_contains))

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
                "connections": self.connections,
                "operations": ops,
            }

    # -- for the HTTP layer (simulator.py), not for tests --------------------------------------

    def connected(self) -> None:
        with self._lock:
            self.connections += 1

    def _note_post(self) -> None:
        with self._lock:
            self.post_requests += 1

    def _note_poll(self, op_id: str) -> SimOperation | None:
        with self._lock:
            self.polls += 1
            return self.operations.get(op_id)

    def _note_download(self, file_id: str) -> str | None:
        """Count a download; the prompt behind the file, for faults that match on it."""
        with self._lock:
            self.downloads += 1
            f = self._files.get(file_id)
            return self.operations[f.op_id].prompt if f else None

    def _record(self, rec: RecordedRequest, *, redirect_server: bool = False) -> None:
        with self._lock:
            (self.redirect_requests if redirect_server else self.requests).append(rec)

    def _first_submit_fault(self) -> tuple[Pending | None, bool]:
        """The head of the submit queue, and whether any submit fault waits for a prompt."""
        with self._lock:
            first = self._faults["submit"][0] if self._faults["submit"] else None
            return first, any(p.prompt_contains for p in self._faults["submit"])

    def _take(self, endpoint: str, prompt: str | None, *, consume: bool = True) -> Pending | None:
        with self._lock:
            for p in self._faults[endpoint]:
                if p.prompt_contains is None or (
                    prompt is not None and p.prompt_contains in prompt
                ):
                    if consume:
                        self._consume(p)
                    return p
            return None

    def _consume(self, pending: Pending) -> bool:
        with self._lock:
            if pending.remaining <= 0:
                return False  # another connection used it up between peek and consume
            pending.remaining -= 1
            if pending.remaining == 0:
                for lst in self._faults.values():
                    if pending in lst:
                        lst.remove(pending)
            return True

    def _create(
        self, model: str, body: dict[str, Any], prompt: str, plan: Plan, fault: Fault | None
    ) -> SimOperation:
        """Accept (and bill) a submission: the operation, and the file it will produce."""
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
                playable=self.video == "real",
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
            if op.playable and op.outcome == "success":
                if self._encoder is None:
                    self._encoder = ThreadPoolExecutor(1, thread_name_prefix="sim-video")
                self._encoder.submit(lambda: op.video)
            return op

    def _stop_encoding(self) -> None:
        """Drop the clips still queued; one being encoded finishes (the interpreter waits for it)."""
        with self._lock:
            encoder, self._encoder = self._encoder, None
        if encoder is not None:
            encoder.shutdown(wait=False, cancel_futures=True)

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


def _video_mode(video: str | None, video_size: int | None) -> str:
    """real or standin: real unless asked otherwise, or unless PyAV cannot be imported."""
    if video is None:
        video = "real" if video_size is None else "standin"
    if video not in VIDEO_MODES:
        raise ValueError(f"video must be real or standin, not {video!r}")
    if video == "real" and video_size is not None:
        raise ValueError("video_size sets the size of stand-in clips: use it with video='standin'")
    if video == "real" and not clips.available():
        _log.warning(
            "reconciler.sim: PyAV (the av package) is not installed, so the simulator serves "
            "stand-in clips that are not playable video; `pip install av` for real ones."
        )
        return "standin"
    return video
