"""httpx for when a proxy is configured: ``http11``'s calls and failures, carried by httpx.

``http11`` speaks HTTP/1.1 to the API's hosts itself; a proxy (HTTP(S)_PROXY, ALL_PROXY, with
NO_PROXY's exceptions) is httpx's to honour, so ``pool`` hands the requests to it then.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

from .http11 import Body, Broken, ConnectFailed, Pool, Unsendable


def proxied() -> bool:
    """Whether the environment names a proxy (HTTP(S)_PROXY, ALL_PROXY): then httpx, which
    honours them and NO_PROXY, carries the requests instead of this client."""
    if sys.platform in ("darwin", "win32"):  # the system's settings count there too
        import urllib.request

        proxies = urllib.request.getproxies()
    else:
        proxies = environment_proxies(os.environ)
    proxies.pop("no", None)
    return bool(proxies)


def environment_proxies(environ: Mapping[str, str]) -> dict[str, str]:
    """``urllib.request.getproxies_environment`` (all that ``getproxies`` reads off macOS and
    Windows), step for step, without importing urllib.request: with http.client and email, that
    was 20-30 ms of CPU at every apply's start. Any case matches, then all-lower-case names win
    (an empty one drops the scheme); a CGI script's HTTP_PROXY is ignored (CVE-2016-1000110)."""
    proxies = {}
    for name, value in environ.items():
        name = name.lower()
        if value and name[-6:] == "_proxy":
            proxies[name[:-6]] = value
    if "REQUEST_METHOD" in environ:
        proxies.pop("http", None)
    for name, value in environ.items():
        if name[-6:] == "_proxy":
            name = name.lower()
            if value:
                proxies[name[:-6]] = value
            else:
                proxies.pop(name[:-6], None)
    return proxies


class ProxiedPool:
    """The same calls through httpx, for when a proxy applies (``proxied``): httpx reads the
    proxy variables and NO_PROXY; its failures are told apart as ``Pool``'s are."""

    def __init__(self, *, timeout: float, connect_timeout: float, keep: int) -> None:
        import httpx

        self._httpx = httpx
        limits = httpx.Limits(max_connections=keep or None, max_keepalive_connections=keep)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            follow_redirects=False, limits=limits,
        )  # fmt: skip

    async def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None = None,
        *,
        fresh: bool = False,
    ) -> Any:
        httpx = self._httpx
        try:
            request = self._http.build_request(method, url, headers=headers, content=body)
            answer = await self._http.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ConnectFailed(type(exc).__name__) from exc
        except (httpx.LocalProtocolError, httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise Unsendable(str(exc)) from exc
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise Broken(type(exc).__name__) from exc
        return _ProxiedResponse(answer, httpx)

    async def aclose(self) -> None:
        await self._http.aclose()


class _ProxiedResponse(Body):
    def __init__(self, answer: Any, httpx: Any) -> None:
        self._answer = answer
        self._httpx = httpx
        self.status_code: int = answer.status_code
        self.headers = {k.lower(): v for k, v in answer.headers.items()}

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._answer.aiter_bytes():
                yield chunk
        except (self._httpx.TransportError, self._httpx.DecodingError) as exc:
            raise Broken(type(exc).__name__) from exc
        finally:
            await self._answer.aclose()

    async def aclose(self) -> None:
        await self._answer.aclose()


def pool(*, timeout: float, connect_timeout: float, keep: int) -> Pool | ProxiedPool:
    """This module's pool, or httpx's where a proxy applies."""
    kind = ProxiedPool if proxied() else Pool
    return kind(timeout=timeout, connect_timeout=connect_timeout, keep=keep)
