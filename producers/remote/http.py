"""A small JSON-over-HTTP client for one inference server (`SGLangHTTP`, `VLLMHTTP` subclass it).

Why urllib in a thread pool: aiohttp and httpx are not dependencies of streamrl (pyproject), and a
second HTTP stack is not worth two adapters. Every call is a blocking `urllib.request` POST/GET
run on a private `ThreadPoolExecutor`, so `max_concurrency` generations can be in flight at once
while the caller's event loop (or the engine's `step`) only waits on futures. Each call opens its
own connection: the cost is a TCP handshake per generation, negligible next to decoding.

A subclass names its server (`error`, whose `server` starts every message) and may add a hint to
an HTTP error (`hint`) or refuse an answer that reports a failure in its body (`check`).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ClassVar, Self


class ServerError(RuntimeError):
    """The server refused a call or could not be reached. `retriable` is True for connection
    failures and 5xx answers (a restart, an overloaded server), False for 4xx (a bad request
    that will fail again) and for answers that are not JSON."""

    server: ClassVar[str] = "server"
    """The server's name, first in every message ("SGLang /generate: HTTP 503: ...")."""

    def __init__(self, path: str, detail: str, *, status: int | None, retriable: bool) -> None:
        super().__init__(f"{self.server} {path}: {detail}")
        self.path, self.status, self.retriable = path, status, retriable


class ResponseError(ValueError):
    """A server answer that breaks the server's documented shapes; `where` names the field.
    (`SGLangResponseError`, `VLLMResponseError`: the adapters' `convert.py` raise them.)"""

    def __init__(self, what: str, where: str) -> None:
        super().__init__(f"{where}: {what}")
        self.what, self.where = what, where


class JSONHTTP:
    """`call(path, payload, query=...)` blocks; `submit(path, payload)` returns a Future.
    `close()` waits for calls in flight; use as a context manager."""

    error: ClassVar[type[ServerError]] = ServerError
    """What every failed call raises."""

    def __init__(self, url: str, *, timeout_s: float = 600.0, max_concurrency: int = 256) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{self.error.server} url must start with http:// or https://, "
                             f"got {url!r}")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency,
                                        thread_name_prefix=f"{self.error.server.lower()}-http")

    def call(self, path: str, payload: dict[str, Any] | None = None, *, method: str = "POST",
             query: dict[str, str] | None = None, timeout_s: float | None = None) -> Any:
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = None if method == "GET" else json.dumps(payload or {}).encode()
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:2000]
            raise self.error(path, f"HTTP {exc.code}: {detail}{self.hint(exc.code)}",
                             status=exc.code, retriable=exc.code >= 500) from None
        except (urllib.error.URLError, OSError) as exc:
            raise self.error(path, f"unreachable at {self.url}: {exc}", status=None,
                             retriable=True) from None
        try:
            answer = json.loads(body) if body else None
        except json.JSONDecodeError:
            raise self.error(path, f"answer is not JSON: {body[:200]!r}", status=200,
                             retriable=False) from None
        self.check(path, answer)
        return answer

    def hint(self, status: int) -> str:
        """Appended to the message of an HTTP error with this status; none here."""
        return ""

    def check(self, path: str, answer: Any) -> None:
        """Raise `self.error` for a 200 answer that reports a failure in its body; none here."""

    def submit(self, path: str, payload: dict[str, Any] | None = None) -> Future[Any]:
        return self._pool.submit(self.call, path, payload)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
