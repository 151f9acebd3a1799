"""The Veo client: the only module that speaks HTTP.

It sends the three calls (submit, poll, download) and hands every failure to ``wire``, which
decides once what it means for that call; callers see only the classes of ``errors``.

Two habits that keep the promises:
- The POST goes over a fresh connection every time. A pooled keep-alive connection that the server
  closed while idle fails *after* the request is written, which would look exactly like the
  ambiguous case and park a spec as ``unknown`` for nothing.
- Polls and downloads share one keep-alive pool of a few connections, entered through two
  semaphores (``POLL_SLOTS`` and ``DOWNLOAD_SLOTS``) whose sum is the pool's size, so a poll never
  waits behind a long download and connections are not churned. A poll takes a millisecond on
  loopback and tens over the internet against the seconds between two polls of one operation, so
  two connections carry 50 operations' polls.
- The requests go through ``http11``, a lean HTTP/1.1 client (httpx cost about 0.9 ms of CPU per
  request, most of an apply's CPU), or through httpx where a proxy applies: both raise the same
  three failures, which this module turns into ``wire``'s.
- Redirects are followed by hand: the key goes only to the configured API origins, never to the
  storage host a download redirects to (httpx would forward custom headers across origins).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urljoin, urlsplit

from . import __version__
from .config import ApiSettings
from .errors import ApiError
from .http11 import Broken, ConnectFailed, RawBody, Unsendable
from .httpproxy import pool
from .wire import (
    SUBMIT_RETRYING_5XX,
    Call,
    Failure,
    OpResult,
    answer_error,
    operation_id,
    operation_name,
    parse_operation,
    redact,
    transport_error,
)

MAX_REDIRECTS = 5
# A URL's scheme and host (user and port included) exactly as urlsplit reads them: up to the
# first of / ? # or the end, with no whitespace (urlsplit drops tabs and line breaks, and a URL
# holding one is decided on its own).
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s]*(?=[/?#]|\Z)")
POLL_SLOTS = 2  # connections polls use at once (the POST has its own, fresh each time)
DOWNLOAD_SLOTS = 4  # downloads at once


class VeoClient:
    """Submit, poll and download against one configured API."""

    def __init__(
        self,
        settings: ApiSettings,
        *,
        timeout: float = 60.0,
        resubmit_after_server_error: bool = False,
    ) -> None:
        self.settings = settings
        self._submit_table = SUBMIT_RETRYING_5XX if resubmit_after_server_error else None
        self._headers = {"user-agent": f"reconciler/{__version__}"}
        self._http = pool(timeout=timeout, connect_timeout=15.0, keep=POLL_SLOTS + DOWNLOAD_SLOTS)
        self._polls = asyncio.Semaphore(POLL_SLOTS)  # the pool's connections: never more
        self._downloads = asyncio.Semaphore(DOWNLOAD_SLOTS)
        self._origins = settings.origins
        self._auth: dict[str, dict[str, str]] = {}  # by _PREFIX: the headers to send there
        self._submit_http = pool(timeout=timeout * 2, connect_timeout=15.0, keep=0)

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._submit_http.aclose()

    def _with_auth(self, url: str) -> dict[str, str]:
        """The headers of a request: the key only for the configured API origins. Decided once
        per scheme and host as written (``_PREFIX``): parsing the host and port of every URL
        was a tenth of a poll's CPU."""
        prefix = _PREFIX.match(url)
        headers = self._auth.get(prefix[0]) if prefix else None
        if headers is None:
            headers = self._headers
            try:
                parts = urlsplit(url)
                origin = (parts.scheme, parts.hostname or "", parts.port)
            except ValueError:  # a port out of range, a bad [IPv6]: the pool refuses it too
                origin = None
            if self.settings.api_key and origin in self._origins:
                headers = {**self._headers, "x-goog-api-key": self.settings.api_key}
            if prefix:
                if len(self._auth) >= 64:  # a daemon's redirects to ever new hosts
                    self._auth.clear()
                self._auth[prefix[0]] = headers
        return headers

    def _answer_error(self, call: Call, response: Any, subject: str = "") -> ApiError:
        table = self._submit_table if call is Call.SUBMIT else None
        return answer_error(
            call, response.status_code, response.text, response.headers,
            secret=self.settings.api_key, subject=subject, table=table,
        )  # fmt: skip

    def _redact(self, text: str) -> str:
        """Whatever a server echoes (request headers included) never carries the key onwards."""
        return redact(text, self.settings.api_key)

    async def submit(self, model: str, body: dict[str, Any]) -> str:
        """The paid call. Returns the operation name; raises AmbiguousError if the answer was lost."""
        url = f"{self.settings.submit_base}/v1beta/models/{model}:predictLongRunning"
        where = _origin(url)
        headers = {**self._with_auth(url), "content-type": "application/json"}
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        try:
            response = await self._submit_http.request(
                "POST", url, headers, content.encode(), fresh=True
            )
            await response.read()
        except ConnectFailed as exc:
            detail = f"could not connect to {where} ({exc})"
            raise transport_error(Call.SUBMIT, Failure.CONNECT, detail) from exc
        except Unsendable as exc:
            detail = f"could not send a request to {where}: {exc}"
            raise transport_error(Call.SUBMIT, Failure.UNSENDABLE, detail) from exc
        except Broken as exc:
            detail = f"the connection to {where} failed after the request was sent ({exc})"
            raise transport_error(Call.SUBMIT, Failure.SENT, detail) from exc
        if response.status_code >= 300:
            raise self._answer_error(Call.SUBMIT, response, subject=model)
        try:
            return self._redact(operation_name(response.json()))
        except ValueError as exc:
            detail = (
                "the provider accepted the request but its answer had no operation name "
                f"({self._redact(response.text)[:200]!r})"
            )
            raise transport_error(Call.SUBMIT, Failure.UNREADABLE, detail) from exc

    async def poll(self, model: str, operation: str) -> OpResult:
        url = (
            f"{self.settings.query_base}/v1beta/models/{model}/operations/{operation_id(operation)}"
        )
        try:
            async with self._polls:
                response = await self._http.request("GET", url, self._with_auth(url))
                await response.read()
        except (ConnectFailed, Unsendable, Broken) as exc:
            detail = f"polling failed ({exc})"
            raise transport_error(Call.POLL, Failure.SENT, detail) from exc
        if response.status_code >= 300:
            raise self._answer_error(Call.POLL, response, subject=operation)
        try:
            data = response.json()
        except ValueError as exc:
            detail = "the operation answer was not JSON"
            raise transport_error(Call.POLL, Failure.UNREADABLE, detail) from exc
        result = parse_operation(data)
        if result.video_uri is not None:
            result = replace(result, video_uri=self._redact(result.video_uri))
        if result.error is not None:
            result.error.args = (self._redact(str(result.error)),)
            result.error.reason = self._redact(result.error.reason)
        return result

    def download_url(self, video_uri: str, file_id: str | None) -> str:
        """Download by file id from the configured base; the returned URI's host is not trusted."""
        if file_id:
            return f"{self.settings.query_base}/v1beta/files/{file_id}:download?alt=media"
        return video_uri

    async def download(
        self,
        video_uri: str,
        file_id: str | None,
        sink: Callable[[bytes], Awaitable[None]],
        *,
        pour: Callable[[RawBody], Awaitable[int]] | None = None,
    ) -> int:
        """Stream the video into ``sink``; returns the byte count. Never buffers the whole file.
        ``pour``: takes a body that can be read off the event loop (``http11.Response.raw``: a
        large one on a plain connection) whole instead, on the sink's own thread."""
        url = self.download_url(video_uri, file_id)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                async with self._downloads:
                    response = await self._http.request("GET", url, self._with_auth(url))
                    if response.status_code in (301, 302, 303, 307, 308) and (
                        "location" in response.headers
                    ):
                        await response.aclose()
                        url = _joined(url, response.headers["location"])
                        continue
                    if response.status_code >= 300:
                        await response.read()
                        raise self._answer_error(Call.DOWNLOAD, response, subject=file_id or "")
                    expected = response.headers.get("content-length")
                    size = 0
                    try:
                        raw = response.raw() if pour is not None else None
                        if raw is not None and pour is not None:
                            size = await pour(raw)  # read, hashed and written off the loop
                        else:  # as they arrive: the sink gathers them for its writer thread
                            async for chunk in response.chunks():
                                await sink(chunk)
                                size += len(chunk)
                    finally:
                        await response.aclose()  # a sink that failed: the connection goes
                    if expected is not None and expected.isdigit() and int(expected) != size:
                        detail = f"download cut short ({size} of {expected} bytes)"
                        raise transport_error(Call.DOWNLOAD, Failure.SHORT, detail)
                    return size
            except (ConnectFailed, Unsendable, Broken) as exc:
                detail = f"download failed ({exc})"
                raise transport_error(Call.DOWNLOAD, Failure.SENT, detail) from exc
        detail = f"too many redirects downloading {file_id or 'the video'}"
        raise transport_error(Call.DOWNLOAD, Failure.REDIRECTS, detail)


def _joined(url: str, location: str) -> str:
    """Where a redirect leads; Unsendable when urllib cannot read it (a bad [IPv6] host)."""
    try:
        return urljoin(url, location)
    except ValueError as exc:
        raise Unsendable(f"a redirect to {location[:80]!r}: {exc}") from None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
