"""The wire protocol, read: operation answers in every documented shape, and what each error means.

Pure functions over what came back (veo-api.md): both operation-name forms, the wrapped and flat
result shapes, ``generatedSamples``/``generatedVideos``, both error envelopes. What an HTTP error or
a transport failure *means* depends on the call: a dropped connection is a retry on a poll but may
be a paid job on the POST. That is decided here, once, from one table per call, the way httpx maps
transport exceptions at its edge; the engine only ever receives the resulting class of
``errors.ApiError``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .errors import (
    AmbiguousError,
    ApiError,
    ContentPolicyError,
    FatalError,
    FileMissing,
    FilteredError,
    ModelUnavailable,
    OperationFailed,
    OperationLost,
    PermanentError,
    RateLimited,
    ServerError,
    TransientError,
)
from .facts import video_identity

POLICY_WORDS = re.compile(r"polic|safety|blocked|prohibited|responsible ai", re.I)


class Call(StrEnum):
    SUBMIT = "submit"  # the paid POST
    POLL = "poll"
    DOWNLOAD = "download"


@dataclass(frozen=True)
class Answer:
    """An HTTP error answer, reduced to what decides its meaning."""

    call: Call
    status: int
    message: str  # the provider's own words (or the body's start), the key cut out
    retry_after: float | None = None
    subject: str = ""  # what the call was about: an operation name or a file id

    @property
    def said(self) -> str:
        return f"{self.status}: {self.message}"


Decide = Callable[[Answer], ApiError]


def _key(a: Answer) -> ApiError:
    return FatalError(
        f"the API key was refused ({a.said}); set GPTPROTO_API_KEY to a valid key",
        status=a.status, reason=a.message,
    )  # fmt: skip


def _forbidden(a: Answer) -> ApiError:
    if "balance" in a.message.lower() or "quota" in a.message.lower():
        return FatalError(
            f"insufficient balance on the API account ({a.said}); top it up, then run again",
            status=a.status, reason=a.message,
        )  # fmt: skip
    return FatalError(
        f"permission denied ({a.said}); check the key's access to Veo",
        status=a.status, reason=a.message,
    )  # fmt: skip


def _policy(a: Answer) -> ApiError:
    return ContentPolicyError(
        f"refused by content policy ({a.said})", status=a.status, reason=a.message
    )


def _rate(a: Answer) -> ApiError:
    return RateLimited(
        f"rate limited ({a.said})", status=a.status, reason=a.message, retry_after=a.retry_after
    )


def _server(a: Answer) -> ApiError:
    return ServerError(f"server error ({a.said})", status=a.status, reason=a.message)


def _timeout(a: Answer) -> ApiError:
    # 408: the server gave up waiting for the request itself, so nothing was accepted.
    return TransientError(f"request timeout ({a.said})", status=a.status, reason=a.message)


def _gateway(a: Answer) -> ApiError:
    return AmbiguousError(
        f"server error ({a.said}) after the request was sent; a gateway can answer so after "
        "the upstream accepted the job: it may exist and be billed",
        status=a.status, reason=a.message,
    )  # fmt: skip


def _rejected(a: Answer) -> ApiError:
    return PermanentError(f"rejected ({a.said})", status=a.status, reason=a.message)


def _model_gone(a: Answer) -> ApiError:
    # Google retired the preview ids on its own API on 2026-10-22; resellers remap ids on their
    # own schedule. Final for the spec after one request, and not billed.
    return ModelUnavailable(
        f"the provider does not know model {a.subject or '?'} or it is no longer available "
        f"({a.said}); choose another `model` in the spec, or declare the id your provider "
        "serves under `models:` in reconcile.yaml",
        status=a.status, reason=a.message,
    )  # fmt: skip


def _lost(a: Answer) -> ApiError:
    return OperationLost(
        f"the provider does not know operation {a.subject} (404)", status=404, reason="not found"
    )


def _missing(a: Answer) -> ApiError:
    return FileMissing(
        f"the provider does not have the video {a.subject} (404)", status=404, reason="not found"
    )


def _unexpected(a: Answer) -> ApiError:
    return TransientError(
        f"unexpected answer ({a.said}); the job is unaffected", status=a.status, reason=a.message
    )


# What an HTTP error answer means, per call. Keys are tried in order: the exact status, then
# "policy" (a 400 or 503 whose words speak of policy or safety), then "5xx", then "other".
# Only the POST can be refused for good: a poll or a download of a paid job is never final on an
# HTTP error (only the operation's own `done` + `error`, or a filtered result, is).
ANSWERS: dict[Call, dict[int | str, Decide]] = {
    Call.SUBMIT: {
        401: _key, 403: _forbidden, 404: _model_gone, 429: _rate, "policy": _policy,
        408: _timeout, "5xx": _gateway, "other": _rejected,
    },
    Call.POLL: {
        401: _key, 403: _forbidden, 404: _lost, 429: _rate, "5xx": _server, "other": _unexpected,
    },
    Call.DOWNLOAD: {
        401: _key, 403: _forbidden, 404: _missing, 429: _rate, "5xx": _server,
        "other": _unexpected,
    },
}  # fmt: skip
# reconcile.yaml's retries.resubmitAfterServerError: the user accepts the risk of paying twice.
SUBMIT_RETRYING_5XX: dict[int | str, Decide] = {**ANSWERS[Call.SUBMIT], "5xx": _server}


class Failure(StrEnum):
    """Ways a call fails without a usable HTTP answer."""

    CONNECT = "connect"  # refused, connect or pool timeout: nothing left this machine
    UNSENDABLE = "unsendable"  # refused while building the request: nothing left this machine
    SENT = "sent"  # the connection failed after the request may have been written whole
    UNREADABLE = "unreadable"  # answered 2xx, but not with what the call returns
    SHORT = "short"  # a download ended before its Content-Length
    REDIRECTS = "redirects"  # too many redirects


def _not_sent(call: Call, detail: str) -> ApiError:
    return TransientError(detail)


def _unsendable(call: Call, detail: str) -> ApiError:
    return FatalError(detail)


def _ambiguous(call: Call, detail: str) -> ApiError:
    return AmbiguousError(f"{detail}; the job may exist and be billed")


def _retry(call: Call, detail: str) -> ApiError:
    return TransientError(detail)


# What a failure without an answer means, per call: only the POST can leave a paid job behind.
TRANSPORT: dict[Call, dict[Failure, Callable[[Call, str], ApiError]]] = {
    Call.SUBMIT: {
        Failure.CONNECT: _not_sent, Failure.UNSENDABLE: _unsendable, Failure.SENT: _ambiguous,
        Failure.UNREADABLE: _ambiguous,
    },
    Call.POLL: {Failure.CONNECT: _retry, Failure.SENT: _retry, Failure.UNREADABLE: _retry},
    Call.DOWNLOAD: {
        Failure.CONNECT: _retry, Failure.SENT: _retry, Failure.SHORT: _retry,
        Failure.REDIRECTS: _retry,
    },
}  # fmt: skip


def redact(text: str, secret: str | None) -> str:
    """``text`` without ``secret``: a server that echoes request headers must not carry the key
    into the state db, a log or the screen."""
    return text.replace(secret, "***") if secret else text


def answer_error(
    call: Call,
    status: int,
    body: str,
    headers: Mapping[str, str],
    *,
    secret: str | None = None,
    subject: str = "",
    table: dict[int | str, Decide] | None = None,
) -> ApiError:
    """Map an HTTP error answer (either envelope, or none) onto the error tree, for ``call``.

    ``secret`` is cut out of the provider's words first: a gateway that echoes request headers
    in its error page must not carry the key into the state db or onto the screen.
    """
    body = redact(body, secret)
    message = body.strip()[:300] or f"HTTP {status}"
    try:
        err = json.loads(body).get("error")
        if isinstance(err, dict) and err.get("message"):
            message = str(err["message"])
    except (ValueError, AttributeError):
        pass
    retry = retry_after_seconds(_header(headers, "retry-after"))
    answer = Answer(call, status, message, retry, subject)
    table = table or ANSWERS[call]
    policy = status in (400, 503) and POLICY_WORDS.search(message) is not None
    for key in (status, "policy" if policy else None, "5xx" if status >= 500 else None, "other"):
        if key is not None and key in table:
            return table[key](answer)
    raise AssertionError("every table has an 'other' rule")


def transport_error(call: Call, failure: Failure, detail: str) -> ApiError:
    """The error a failure without an answer means for ``call``."""
    return TRANSPORT[call][failure](call, detail)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After in seconds or as an HTTP-date; never negative; None when unusable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime  # here: 8 ms of imports, for a rare answer

    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


# -- operations ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpResult:
    """A polled operation, reduced to what the engine acts on."""

    done: bool
    video_uri: str | None = None
    file_id: str | None = None
    error: PermanentError | None = None


def operation_id(name: str) -> str:
    """Both name forms ('models/m/operations/id', 'operations/id') end in the id."""
    return name.rsplit("operations/", 1)[-1].strip("/")


def file_id_of(uri: str) -> str | None:
    ident = video_identity(uri)
    return None if ident == uri else ident


def operation_name(data: Any) -> str:
    """The operation name of a submit answer; ValueError when the answer has none."""
    name = data["name"] if isinstance(data, dict) and "name" in data else None
    if not isinstance(name, str) or "operations/" not in name:
        raise ValueError(name)
    return name


def parse_operation(data: Any) -> OpResult:
    """Read a poll answer in any documented shape."""
    if not isinstance(data, dict):
        raise TransientError("the operation answer is not a JSON object")
    if not data.get("done"):
        return OpResult(done=False)
    if isinstance(data.get("error"), dict):
        err = data["error"]
        message = str(err.get("message") or f"operation failed (code {err.get('code')})")
        return OpResult(done=True, error=OperationFailed(message, reason=message))
    response = data.get("response") or {}
    inner = response.get("generateVideoResponse") or response
    samples = inner.get("generatedSamples") or inner.get("generatedVideos") or []
    for sample in samples:
        video = (sample or {}).get("video") or {}
        uri = video.get("uri")
        if uri:
            return OpResult(done=True, video_uri=uri, file_id=file_id_of(uri))
    reasons = inner.get("raiMediaFilteredReasons") or []
    if inner.get("raiMediaFilteredCount") or reasons:
        reason = "; ".join(str(r) for r in reasons) or "filtered by the provider's safety filters"
        return OpResult(done=True, error=FilteredError(f"filtered: {reason}", reason=reason))
    # A gateway has been seen to call this success; it is not a video and is never billed.
    return OpResult(done=True, error=FilteredError("finished without a video", reason="no samples"))
