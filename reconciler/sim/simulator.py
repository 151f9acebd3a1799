"""The Simulator: the emulated Veo endpoints and the ``/_sim/`` control plane, on real sockets.

This is where a request meets the service: routing by path, the key check, the injected fault
(an error answer, a drop before or after the operation is billed, a stall, a cut or redirected
download), validation by the rules, then the answer in the documented shape. ``Simulator`` is the
one class users construct; it is the ``Service`` (state and test controls) plus the servers that
expose it, started and stopped here, with plumbing from http.py.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from reconciler.facts import CATALOG, ModelFacts

from .faults import ANSWER_KINDS, Fault, fault_from_json
from .http import Handler, Server, google_error, gptproto_error, serve, shut_down
from .rules import plan_submission, prompt_of
from .service import RecordedRequest, Service, accepted_body, operation_body


class Simulator(Service):
    """The emulated service: start() it, point the client at base_url, inspect what it saw.

    Its videos are real, playable H.264 + AAC clips (``video="real"``, the default; video.py)
    unless ``video="standin"`` or a ``video_size`` asks for stand-ins: files of exactly that many
    bytes (48 KiB by default) with the right container metadata around undecodable media, made in
    microseconds, for tests that download many videos or need a file of a given size.

    It serves the model ids of ``models`` (by default every id in ``facts.CATALOG``; a mapping
    from id to ``ModelFacts`` serves ids of your own) with the limits their facts give; an id in
    ``retired`` (or passed to ``retire``) answers 404 "…no longer available", unbilled, as
    Google's shut-down preview ids do. ``reference_styles=False`` refuses ``referenceType:
    style`` as the Gemini API does (Vertex accepts it).
    """

    def __init__(
        self,
        *,
        api_key: str | None = "sim-key",
        latency: float = 2.0,
        host: str = "127.0.0.1",
        port: int = 0,
        redirect_host: str | None = None,
        video: str | None = None,
        video_size: int | None = None,
        name_form: str = "models",
        done_shape: str = "wrapped",
        omit_done: bool = False,
        file_ttl: float | None = None,
        log: bool = False,
        foreign_sources: bool = False,
        models: Iterable[str] | Mapping[str, ModelFacts] | None = None,
        retired: Iterable[str] = (),
        reference_styles: bool = True,
    ) -> None:
        super().__init__(
            latency=latency,
            video=video,
            video_size=video_size,
            name_form=name_form,
            done_shape=done_shape,
            omit_done=omit_done,
            file_ttl=file_ttl,
            foreign_sources=foreign_sources,
            redirects=redirect_host is not None,
        )
        self.api_key = api_key
        self.host = host
        self.port = port
        self.redirect_host = redirect_host
        self.log = log
        self.models = _served_models(models)
        self.retired = set(retired)
        self.reference_styles = reference_styles
        self._servers: list[tuple[Server, threading.Thread]] = []
        self._base_url: str | None = None
        self._redirect_base_url: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def _serve(self, host: str, port: int, role: str) -> str:
        server, thread, url = serve(host, port, self, role)
        self._servers.append((server, thread))
        return url

    def start(self) -> Simulator:
        if self._servers:
            return self
        self._base_url = self._serve(self.host, self.port, "main")
        if self.redirect_host is not None:
            self._redirect_base_url = self._serve(self.redirect_host, 0, "redirect")
        return self

    def stop(self) -> None:
        servers, self._servers = self._servers, []
        shut_down(servers)
        self._stop_encoding()

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

    # -- models ---------------------------------------------------------------------------------

    def retire(self, model: str) -> None:
        """From now on, a submission to ``model`` answers 404 "…no longer available", unbilled."""
        with self._lock:
            self.retired.add(model)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {**super().stats(), "models": list(self.models), "retired": sorted(self.retired)}

    def _model_facts(self, model: str) -> ModelFacts | str:
        """The facts of a model this service serves, else the message of its 404."""
        with self._lock:
            if model in self.retired:
                return (
                    f"models/{model} is not found for API version v1beta, or is no longer "
                    "available."
                )
            facts = self.models.get(model)
        if facts is None:
            return (
                f"models/{model} is not found for API version v1beta, or is not supported for "
                "predictLongRunning. Call ListModels to see the list of available models."
            )
        return facts

    # -- routing ------------------------------------------------------------------------------

    def route(self, h: Handler) -> None:
        split = urlsplit(h.path)
        path = unquote(split.path)
        if h.server.role == "redirect":
            self._redirected_download(h, path)
            return
        if path.startswith("/_sim/"):
            self._control(h, path)
            return
        if h.command == "POST":
            self._note_post()
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
            self._record_request(h, None)
            h.send_json(404, google_error(404, f"Method not found: {h.command} {path}"))

    def _record_request(self, h: Handler, body: Any | None, redirect_server: bool = False) -> None:
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
        self._record(rec, redirect_server=redirect_server)

    def _authorized(self, h: Handler) -> bool:
        if self.api_key is None or h.headers.get("x-goog-api-key") == self.api_key:
            return True
        h.send_json(401, gptproto_error(401, "Invalid signature"))
        return False

    def _answer_fault(self, h: Handler, fault: Fault) -> None:
        status = fault.status or 500
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(max(0, math.ceil(fault.retry_after)))
        if fault.envelope == "gptproto":
            h.send_json(status, gptproto_error(status, fault.message), headers)
        else:
            h.send_json(status, google_error(status, fault.message), headers)

    # -- the emulated API -----------------------------------------------------------------------

    def _submit(self, h: Handler, model: str) -> None:
        if self.api_key is not None and h.headers.get("x-goog-api-key") != self.api_key:
            self._record_request(h, _json_or_none(h.read_body()))  # read: keep-alive stays in step
            self._authorized(h)
            return
        # drop_before_accept leaves the body unread, unless a queued fault must match a prompt.
        first, needs_prompt = self._first_submit_fault()
        drop_now = first and first.fault.kind == "drop_before_accept" and not needs_prompt
        if drop_now and first and self._consume(first):
            self._record_request(h, None)
            h.drop()
            return
        body = _json_or_none(h.read_body())
        self._record_request(h, body)
        facts = self._model_facts(model)
        if isinstance(facts, str):  # an unknown or retired model: nothing created, nothing billed
            h.send_json(404, google_error(404, facts))
            return
        if body is None:
            h.send_json(400, google_error(400, "Invalid JSON payload received."))
            return
        prompt = prompt_of(body)
        # Peek only: a fault that shapes the operation is used up only if the request is valid.
        pending = self._take("submit", prompt, consume=False)
        fault = pending.fault if pending else None
        if pending and fault and (fault.kind in ANSWER_KINDS or fault.kind == "drop_before_accept"):
            if self._consume(pending):
                if fault.kind == "drop_before_accept":
                    h.drop()
                else:
                    self._answer_fault(h, fault)
                return
            fault = None
        plan = plan_submission(
            body,
            model=model,
            facts=facts,
            source=self._file_op,
            foreign_sources=self.foreign_sources,
            reference_styles=self.reference_styles,
        )
        if isinstance(plan, str):
            h.send_json(400, google_error(400, plan))
            return
        if pending and fault and not self._consume(pending):
            fault = None
        op = self._create(model, body, prompt or "", plan, fault)
        if fault and fault.kind == "drop_after_accept":
            h.drop()
            return
        if fault and fault.kind == "gateway_error":
            status = fault.status or 504
            h.send_json(status, google_error(status, "upstream request timeout"))
            return
        if fault and fault.kind == "echo_headers":
            h.send_json(200, {"echo": {k.lower(): v for k, v in h.headers.items()}})
            return
        if fault and fault.kind == "stall":
            time.sleep(fault.latency or 0.0)
        h.send_json(200, accepted_body(op))

    def _poll(self, h: Handler, model: str | None, op_id: str) -> None:
        op = self._note_poll(op_id)
        h.read_body()
        self._record_request(h, None)
        if not self._authorized(h):
            return
        pending = self._take("poll", op.prompt if op else None)
        if pending and pending.fault.kind == "stall":
            time.sleep(pending.fault.latency or 0.0)  # then answer as usual
            pending = None
        if pending:
            if pending.fault.kind in ANSWER_KINDS:
                self._answer_fault(h, pending.fault)
            else:
                h.drop()
            return
        if op is None or (model is not None and model != op.model):
            shown = f"models/{model}/operations/{op_id}" if model else f"operations/{op_id}"
            h.send_json(404, google_error(404, f"Operation {shown} not found."))
            return
        h.send_json(200, operation_body(op, base_url=self.base_url, omit_done=self.omit_done))

    def _download(self, h: Handler, file_id: str, query: str) -> None:
        prompt = self._note_download(file_id)
        h.read_body()
        self._record_request(h, None)
        if not self._authorized(h):
            return
        pending = self._take("download", prompt)
        kind = pending.fault.kind if pending else None
        if pending and kind in ANSWER_KINDS:
            self._answer_fault(h, pending.fault)
            return
        if kind in ("drop_before_accept", "drop_after_accept"):
            h.drop()
            return
        if parse_qs(query).get("alt") != ["media"]:
            h.send_json(400, google_error(400, "Downloading file content needs alt=media."))
            return
        op = self._file_op(file_id)
        video = op.video if op else None
        if video is None:
            h.send_json(404, google_error(404, "Requested entity was not found."))
            return
        if kind == "redirect":
            h.send_redirect(f"{self._redirect_base_url}{urlsplit(h.path).path}?{query}")
            return
        h.send_bytes(video, cut=kind == "cut_download")

    def _redirected_download(self, h: Handler, path: str) -> None:
        # Storage behind a redirect takes no API key: it records what the client sent anyway.
        h.read_body()
        self._record_request(h, None, redirect_server=True)
        m = re.fullmatch(r"(?:/upload)?/v1beta/files/([^/:]+):download", path)
        op = self._file_op(m.group(1)) if m and h.command == "GET" else None
        video = op.video if op else None
        if video is None:
            h.send_json(404, google_error(404, "Requested entity was not found."))
            return
        h.send_bytes(video)

    # -- the control plane: a second process steers a running simulator -----------------------

    def _control(self, h: Handler, path: str) -> None:
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
            elif h.command == "POST" and path == "/_sim/retire":
                spec = json.loads(raw or b"{}")
                model = spec.get("model") if isinstance(spec, dict) else None
                if not isinstance(model, str) or not model:
                    raise ValueError('retire needs a model id: {"model": "..."}')
                self.retire(model)
                h.send_json(200, {"ok": True, "retired": sorted(self.retired)})
            elif h.command == "POST" and path == "/_sim/latency":
                spec = json.loads(raw or b"{}")
                self.set_latency(float(spec["seconds"]))
                h.send_json(200, {"ok": True, "latency": self.latency})
            else:
                h.send_json(404, {"error": f"no control endpoint {h.command} {path}"})
        except (ValueError, KeyError, TypeError) as exc:
            h.send_json(400, {"error": str(exc)})


def _served_models(
    models: Iterable[str] | Mapping[str, ModelFacts] | None,
) -> dict[str, ModelFacts]:
    """The model ids a simulator serves, each with its facts."""
    if models is None:
        return dict(CATALOG)
    if isinstance(models, Mapping):
        return dict(models)
    if isinstance(models, str):
        raise ValueError("models is a collection of model ids, not one id")
    ids = list(models)
    unknown = sorted(set(ids) - set(CATALOG))
    if unknown:
        raise ValueError(
            f"models not in facts.CATALOG: {', '.join(unknown)}; pass a mapping to ModelFacts "
            "to serve ids of your own"
        )
    return {model: CATALOG[model] for model in ids}


def _json_or_none(raw: bytes) -> Any | None:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None
