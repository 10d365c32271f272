"""A small JSON-over-HTTP client for one vLLM server.

Blocking `urllib.request` calls on a private thread pool, as the SGLang adapter does (no new
dependency; `max_concurrency` generations in flight while `step()` only waits on futures). Each
call opens its own connection: a TCP handshake per generation, negligible next to decoding.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class VLLMError(RuntimeError):
    """The server refused a call or could not be reached. `retriable` is True for connection
    failures and 5xx answers (a restart, an overloaded server), False for 4xx (a bad request,
    or an endpoint the server does not offer: it will fail again)."""

    def __init__(self, path: str, detail: str, *, status: int | None, retriable: bool) -> None:
        super().__init__(f"vLLM {path}: {detail}")
        self.path, self.status, self.retriable = path, status, retriable


class VLLMHTTP:
    """`call(path, payload, query=...)` blocks; `submit(...)` returns a Future. `close()` waits
    for calls in flight."""

    def __init__(self, url: str, *, timeout_s: float = 600.0, max_concurrency: int = 256) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"vLLM url must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency,
                                        thread_name_prefix="vllm-http")

    def call(self, path: str, payload: dict[str, Any] | None = None, *, method: str = "POST",
             query: dict[str, str] | None = None, timeout_s: float | None = None) -> Any:
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = None if method == "GET" else json.dumps(payload or {}).encode()
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s) as answer:
                body = answer.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:2000]
            hint = (" (the server offers no such endpoint: the weight-update and pause "
                    "endpoints need VLLM_SERVER_DEV_MODE=1 in the server's environment)"
                    if exc.code == 404 else "")
            raise VLLMError(path, f"HTTP {exc.code}: {detail}{hint}", status=exc.code,
                            retriable=exc.code >= 500) from None
        except (urllib.error.URLError, OSError) as exc:
            raise VLLMError(path, f"unreachable at {self.url}: {exc}", status=None,
                            retriable=True) from None
        try:
            return json.loads(body) if body else None
        except json.JSONDecodeError:
            raise VLLMError(path, f"answer is not JSON: {body[:200]!r}", status=200,
                            retriable=False) from None

    def submit(self, path: str, payload: dict[str, Any] | None = None) -> Future[Any]:
        return self._pool.submit(self.call, path, payload)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
