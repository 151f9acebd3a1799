"""The Veo client: the only module that speaks HTTP.

It sends the three calls (submit, poll, download) and hands every failure to ``wire``, which
decides once what it means for that call; callers see only the classes of ``errors``.

Two habits that keep the promises:
- The POST goes over a fresh connection every time. A pooled keep-alive connection that the server
  closed while idle fails *after* the request is written, which would look exactly like the
  ambiguous case and park a spec as ``unknown`` for nothing.
- Polls and downloads share one keep-alive pool of a few connections, entered through two
  semaphores (``POLL_SLOTS`` and ``DOWNLOAD_SLOTS``) whose sum is the pool's size, so httpcore
  never queues and a poll never waits behind a long download. httpcore's pool checks every
  connection it holds (a syscall or two each) on each request and each release: measured here
  with 50 operations in flight, 0.7 ms of CPU per poll on 2 connections, 1.3 ms on 8, 4.1 ms on
  50. A poll takes a millisecond on loopback and tens over the internet against the seconds
  between two polls of one operation, so two connections carry 50 operations' polls. A pool
  smaller than the requests in flight with no semaphore in front closes a connection after
  nearly every request instead (3,145 TCP connections for 1,000 specs).
- Redirects are followed by hand: the key goes only to the configured API origins, never to the
  storage host a download redirects to (httpx would forward custom headers across origins).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from . import __version__
from .config import ApiSettings
from .errors import ApiError
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
# httpcore hands a body up in reads of at most 64 KiB: 4,096 trips through httpcore, h11 and anyio
# for a 256 MiB video, and that, not the wire, was the download's pace (770 MiB/s of CPU-bound
# reading here, against 1.5 GiB/s at 1 MiB). The size bounds what one read returns of what the
# event loop has already received (asyncio reads 256 KiB at a time), so small answers cost the
# same. A class attribute of httpcore's HTTP/1.1 connection, the one knob there is: set here,
# the only module that speaks HTTP, and only where that version of httpcore has it.
READ_SIZE = 1 << 20
try:
    from httpcore._async.http11 import AsyncHTTP11Connection
except ImportError:  # pragma: no cover - another httpcore layout: its own read size stands
    pass
else:
    if getattr(AsyncHTTP11Connection, "READ_NUM_BYTES", READ_SIZE) < READ_SIZE:
        AsyncHTTP11Connection.READ_NUM_BYTES = READ_SIZE
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
        headers = {"user-agent": f"reconciler/{__version__}"}
        pool = POLL_SLOTS + DOWNLOAD_SLOTS
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=15.0),
            headers=headers,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
        )
        self._polls = asyncio.Semaphore(POLL_SLOTS)  # in front of the pool: it never queues
        self._downloads = asyncio.Semaphore(DOWNLOAD_SLOTS)
        self._origins = settings.origins
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
            self._origins
        ):
            return {"x-goog-api-key": self.settings.api_key}
        return {}

    def _answer_error(self, call: Call, response: httpx.Response, subject: str = "") -> ApiError:
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
        try:
            response = await self._submit_http.post(url, json=body, headers=self._auth(url))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            detail = f"could not connect to {where} ({type(exc).__name__})"
            raise transport_error(Call.SUBMIT, Failure.CONNECT, detail) from exc
        except (httpx.LocalProtocolError, httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            detail = f"could not send a request to {where}: {exc}"
            raise transport_error(Call.SUBMIT, Failure.UNSENDABLE, detail) from exc
        except (httpx.TransportError, httpx.DecodingError) as exc:
            detail = (
                f"the connection to {where} failed after the request was sent "
                f"({type(exc).__name__})"
            )
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
                response = await self._http.get(url, headers=self._auth(url))
        except httpx.TransportError as exc:
            detail = f"polling failed ({type(exc).__name__})"
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
        self, video_uri: str, file_id: str | None, sink: Callable[[bytes], Awaitable[None]]
    ) -> int:
        """Stream the video into ``sink``; returns the byte count. Never buffers the whole file."""
        url = self.download_url(video_uri, file_id)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                async with (
                    self._downloads,
                    self._http.stream("GET", url, headers=self._auth(url)) as response,
                ):
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code >= 300:
                        await response.aread()
                        raise self._answer_error(Call.DOWNLOAD, response, subject=file_id or "")
                    expected = response.headers.get("content-length")
                    size = 0
                    # As they arrive: the sink gathers them into pieces for its writer thread.
                    async for chunk in response.aiter_bytes():
                        await sink(chunk)
                        size += len(chunk)
                    if expected is not None and int(expected) != size:
                        detail = f"download cut short ({size} of {expected} bytes)"
                        raise transport_error(Call.DOWNLOAD, Failure.SHORT, detail)
                    return size
            except httpx.TransportError as exc:
                detail = f"download failed ({type(exc).__name__})"
                raise transport_error(Call.DOWNLOAD, Failure.SENT, detail) from exc
        detail = f"too many redirects downloading {file_id or 'the video'}"
        raise transport_error(Call.DOWNLOAD, Failure.REDIRECTS, detail)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
