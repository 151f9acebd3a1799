"""The Veo client: the only module that speaks HTTP.

It knows every documented variant of the wire protocol (veo-api.md): both operation-name forms,
the wrapped and flat result shapes, ``generatedSamples``/``generatedVideos``, both error envelopes.
Foreign errors are mapped once, here, onto the tree in ``errors.py``, and what a dropped connection
means depends on the step: on a poll it is transient, on the paid POST it is ambiguous.

Two habits that keep the promises:
- The POST goes over a fresh connection every time. A pooled keep-alive connection that the server
  closed while idle fails *after* the request is written, which would look exactly like the
  ambiguous case and park a spec as ``unknown`` for nothing.
- Redirects are followed by hand: the key goes only to the configured API origins, never to the
  storage host a download redirects to (httpx would forward custom headers across origins).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx

from . import __version__
from .config import ApiSettings
from .errors import (
    AmbiguousError,
    ApiError,
    ContentPolicyError,
    FatalError,
    FilteredError,
    OperationFailed,
    OperationLost,
    PermanentError,
    TransientError,
)
from .spec import video_identity

POLICY_WORDS = re.compile(r"polic|safety|blocked|prohibited|responsible ai", re.I)
MAX_REDIRECTS = 5
T = TypeVar("T")


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


def file_id_of(uri: str) -> str | None:
    ident = video_identity(uri)
    return None if ident == uri else ident


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def error_from_response(
    status: int, body: str, headers: httpx.Headers | dict[str, str], *, secret: str | None = None
) -> ApiError:
    """Map an HTTP error answer (either envelope) onto the error tree.

    ``secret`` is cut out of the provider's words first: a gateway that echoes request headers
    in its error page must not carry the key into the state db or onto the screen.
    """
    if secret:
        body = body.replace(secret, "***")
    message = body.strip()[:300] or f"HTTP {status}"
    try:
        err = json.loads(body).get("error")
        if isinstance(err, dict) and err.get("message"):
            message = str(err["message"])
    except (ValueError, AttributeError):
        pass
    said = f"{status}: {message}"
    if status == 401:
        return FatalError(
            f"the API key was refused ({said}); set GPTPROTO_API_KEY to a valid key",
            status=status,
            reason=message,
        )
    if status == 403:
        if "balance" in message.lower() or "quota" in message.lower():
            return FatalError(
                f"insufficient balance on the API account ({said}); top it up, then run again",
                status=status,
                reason=message,
            )
        return FatalError(
            f"permission denied ({said}); check the key's access to Veo",
            status=status,
            reason=message,
        )
    if status in (400, 503) and POLICY_WORDS.search(message):
        return ContentPolicyError(
            f"refused by content policy ({said})", status=status, reason=message
        )
    if status == 429:
        wait = retry_after_seconds(httpx.Headers(headers).get("retry-after"))
        return TransientError(
            f"rate limited ({said})", status=status, reason=message, retry_after=wait
        )
    if status >= 500 or status == 408:
        return TransientError(f"server error ({said})", status=status, reason=message)
    return PermanentError(f"rejected ({said})", status=status, reason=message)


class VeoClient:
    """Submit, poll and download against one configured API."""

    def __init__(self, settings: ApiSettings, *, timeout: float = 60.0) -> None:
        self.settings = settings
        headers = {"user-agent": f"reconciler/{__version__}"}
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=15.0), headers=headers, follow_redirects=False
        )
        self._submit_http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout * 2, connect=15.0),
            headers=headers,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._submit_http.aclose()

    def _auth(self, url: str) -> dict[str, str]:
        """The key header, only for the configured API origins."""
        parts = urlsplit(url)
        if self.settings.api_key and (parts.scheme, parts.hostname or "", parts.port) in (
            self.settings.origins
        ):
            return {"x-goog-api-key": self.settings.api_key}
        return {}

    async def submit(self, model: str, body: dict[str, Any]) -> str:
        """The paid call. Returns the operation name; raises AmbiguousError if the answer was lost."""
        url = f"{self.settings.submit_base}/v1beta/models/{model}:predictLongRunning"
        try:
            response = await self._submit_http.post(url, json=body, headers=self._auth(url))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise TransientError(
                f"could not connect to {_origin(url)} ({type(exc).__name__})"
            ) from exc
        except (httpx.LocalProtocolError, httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            # Refused while building the request: nothing left this machine.
            raise FatalError(f"could not send a request to {_origin(url)}: {exc}") from exc
        except (httpx.TransportError, httpx.DecodingError) as exc:
            # The request may have been written whole: the job may exist. Only the user may resubmit.
            raise AmbiguousError(
                f"the connection to {_origin(url)} failed after the request was sent "
                f"({type(exc).__name__}); the job may exist and be billed"
            ) from exc
        if response.status_code >= 300:
            raise error_from_response(
                response.status_code, response.text, response.headers, secret=self.settings.api_key
            )
        try:
            name = response.json()["name"]
            if not isinstance(name, str) or "operations/" not in name:
                raise ValueError(name)
        except (ValueError, KeyError, TypeError) as exc:
            raise AmbiguousError(
                f"the provider accepted the request but its answer had no operation name "
                f"({response.text[:200]!r}); the job may exist and be billed"
            ) from exc
        return name

    async def poll(self, model: str, operation: str) -> OpResult:
        url = (
            f"{self.settings.query_base}/v1beta/models/{model}/operations/{operation_id(operation)}"
        )
        try:
            response = await self._http.get(url, headers=self._auth(url))
        except httpx.TransportError as exc:
            raise TransientError(f"polling failed ({type(exc).__name__})") from exc
        if response.status_code == 404:
            raise OperationLost(
                f"the provider does not know operation {operation} (404)", status=404,
                reason="not found",
            )  # fmt: skip
        if response.status_code >= 300:
            raise error_from_response(
                response.status_code, response.text, response.headers, secret=self.settings.api_key
            )
        try:
            return parse_operation(response.json())
        except ValueError as exc:
            raise TransientError("the operation answer was not JSON") from exc

    def download_url(self, video_uri: str, file_id: str | None) -> str:
        """Download by file id from the configured base; the returned URI's host is not trusted."""
        if file_id:
            return f"{self.settings.query_base}/v1beta/files/{file_id}:download?alt=media"
        return video_uri

    async def download(
        self, video_uri: str, file_id: str | None, sink: Callable[[bytes], None]
    ) -> int:
        """Stream the video into ``sink``; returns the byte count. Never buffers the whole file."""
        url = self.download_url(video_uri, file_id)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                async with self._http.stream("GET", url, headers=self._auth(url)) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code == 404:
                        raise PermanentError(
                            "the provider deleted the video before it was downloaded (404); "
                            "`reconcile apply --retry-failed` pays for a new one",
                            status=404,
                            reason="expired",
                        )
                    if response.status_code >= 300:
                        await response.aread()
                        raise error_from_response(
                            response.status_code, response.text, response.headers,
                            secret=self.settings.api_key,
                        )  # fmt: skip
                    expected = response.headers.get("content-length")
                    size = 0
                    async for chunk in response.aiter_bytes(1024 * 1024):
                        sink(chunk)
                        size += len(chunk)
                    if expected is not None and int(expected) != size:
                        raise TransientError(f"download cut short ({size} of {expected} bytes)")
                    return size
            except httpx.TransportError as exc:
                raise TransientError(f"download failed ({type(exc).__name__})") from exc
        raise TransientError(f"too many redirects downloading {file_id or 'the video'}")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter: retries never spin and never stampede."""

    base: float = 1.0
    cap: float = 60.0
    attempts: int = 6

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), 3600.0)
        return random.uniform(0, min(self.cap, self.base * 2**attempt))


async def with_retries(
    call: Callable[[], Awaitable[T]],
    backoff: Backoff,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_retry: Callable[[TransientError, float], None] | None = None,
) -> T:
    """Run ``call``, retrying only TransientError, at most ``backoff.attempts`` times in all."""
    for attempt in range(backoff.attempts):
        try:
            return await call()
        except TransientError as exc:
            if attempt + 1 >= backoff.attempts:
                raise
            wait = backoff.delay(attempt, exc.retry_after)
            if on_retry:
                on_retry(exc, wait)
            await sleep(wait)
    raise AssertionError("unreachable")
