"""The JSON client for one vLLM server: the shared `JSONHTTP` (producers/remote/http.py), whose
errors say "vLLM" and explain a 404 (the dev-mode endpoints)."""

from __future__ import annotations

from streamrl.producers.remote.http import JSONHTTP, ServerError


class VLLMError(ServerError):
    """The server refused a call or could not be reached. `retriable` is True for connection
    failures and 5xx answers (a restart, an overloaded server), False for 4xx (a bad request,
    or an endpoint the server does not offer: it will fail again)."""

    server = "vLLM"


class VLLMHTTP(JSONHTTP):
    """`call(path, payload, query=...)` blocks; `submit(...)` returns a Future. `close()` waits
    for calls in flight."""

    error = VLLMError

    def hint(self, status: int) -> str:
        return (" (the server offers no such endpoint: the weight-update and pause endpoints "
                "need VLLM_SERVER_DEV_MODE=1 in the server's environment)"
                if status == 404 else "")
