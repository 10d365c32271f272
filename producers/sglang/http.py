"""A small JSON-over-HTTP client for one SGLang server.

Why urllib in a thread pool: aiohttp and httpx are not dependencies of streamrl (pyproject), and a
second HTTP stack is not worth one adapter. Every call is a blocking `urllib.request` POST/GET run
on a private `ThreadPoolExecutor`, so `max_concurrency` generations can be in flight at once while
the caller's event loop (or the engine's `step`) only waits on futures. Each call opens its own
connection: the cost is a TCP handshake per generation, negligible next to decoding a response.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class SGLangError(RuntimeError):
    """The server refused a call or could not be reached. `retriable` is True for connection
    failures and 5xx answers (a restart, an overloaded server), False for 4xx (a bad request
    that will fail again) and for answers that report `success: false`."""

    def __init__(self, path: str, detail: str, *, status: int | None, retriable: bool) -> None:
        super().__init__(f"SGLang {path}: {detail}")
        self.path, self.status, self.retriable = path, status, retriable


class SGLangHTTP:
    """`call(path, payload)` blocks; `submit(path, payload)` returns a Future. `close()` waits
    for calls in flight; use as a context manager."""

    def __init__(self, url: str, *, timeout_s: float = 600.0, max_concurrency: int = 256) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"SGLang url must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency,
                                        thread_name_prefix="sglang-http")

    def call(self, path: str, payload: dict[str, Any] | None = None, *,
             method: str = "POST") -> Any:
        data = None if method == "GET" else json.dumps(payload or {}).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:2000]
            raise SGLangError(path, f"HTTP {exc.code}: {detail}", status=exc.code,
                              retriable=exc.code >= 500) from None
        except (urllib.error.URLError, OSError) as exc:
            raise SGLangError(path, f"unreachable at {self.url}: {exc}", status=None,
                              retriable=True) from None
        try:
            answer = json.loads(body) if body else None
        except json.JSONDecodeError:
            raise SGLangError(path, f"answer is not JSON: {body[:200]!r}", status=200,
                              retriable=False) from None
        if isinstance(answer, dict) and answer.get("success") is False:
            raise SGLangError(path, f"refused: {answer.get('message', '')}", status=200,
                              retriable=False)
        return answer

    def submit(self, path: str, payload: dict[str, Any] | None = None) -> Future[Any]:
        return self._pool.submit(self.call, path, payload)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> SGLangHTTP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
