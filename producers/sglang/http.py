"""The JSON client for one SGLang server: the shared `JSONHTTP` (producers/remote/http.py), whose
errors say "SGLang" and which refuses answers that report `success: false`."""

from __future__ import annotations

from typing import Any

from streamrl.producers.remote.http import JSONHTTP, ServerError


class SGLangError(ServerError):
    """The server refused a call or could not be reached. `retriable` is True for connection
    failures and 5xx answers (a restart, an overloaded server), False for 4xx (a bad request
    that will fail again) and for answers that report `success: false`."""

    server = "SGLang"


class SGLangHTTP(JSONHTTP):
    """`call(path, payload)` blocks; `submit(path, payload)` returns a Future. `close()` waits
    for calls in flight; use as a context manager."""

    error = SGLangError

    def check(self, path: str, answer: Any) -> None:
        if isinstance(answer, dict) and answer.get("success") is False:
            raise SGLangError(path, f"refused: {answer.get('message', '')}", status=200,
                              retriable=False)
