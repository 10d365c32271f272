"""A small local HTTP server that answers with SGLang's JSON shapes. It is NOT SGLang: it is a
test double for our HTTP client, built from the shapes SGLang's source defines (see
producers/sglang/convert.py for the file and function of each), and it records every call.

`/generate` answers deterministically from the request: response token i is
(last prompt token + i + 1) % vocab, its logprob -0.1 * (i + 1), up to `max_new_tokens` or the
first of `stop_token_ids` (finish reason "stop", the stop token kept, as with `no_stop_trim`). A
request asking for more than `hold_over` tokens stands for a long generation: it is answered only
when `/abort_request` names its rid, with its first `ABORTED_TOKENS` tokens and finish reason
"abort" (what SGLang returns for an aborted request). The weight version changes
after `switch_after` tokens when a weight update arrived while the request was running; routed
experts are base64 int32 `[seqlen - 1 - start_len, num_hidden_layers, top_k]` with expert
(position * 7 + layer * 3 + slot) % num_experts at (position, layer, slot), zeros in dense layers.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

ABORTED_TOKENS = 2  # tokens a held request "generated" before its abort


def expert_at(position: int, layer: int, slot: int, num_experts: int) -> int:
    return (position * 7 + layer * 3 + slot) % num_experts


def sglang_routing(seqlen: int, start_len: int, num_hidden_layers: int, moe_layers: tuple[int, ...],
                   top_k: int, num_experts: int) -> str:
    """What SGLang puts in meta_info["routed_experts"] for positions [start_len, seqlen - 1)."""
    rows = np.zeros((seqlen - 1 - start_len, num_hidden_layers, top_k), np.int32)
    for r in range(rows.shape[0]):
        for layer in moe_layers:
            for s in range(top_k):
                rows[r, layer, s] = expert_at(start_len + r, layer, s, num_experts)
    return base64.b64encode(rows.tobytes()).decode()


class FakeSGLang:
    def __init__(self, *, vocab: int, num_hidden_layers: int = 0, moe_layers: tuple[int, ...] = (),
                 top_k: int = 0, num_experts: int = 0, switch_after: int = 2,
                 hold_over: int | None = None) -> None:
        self.vocab, self.layers, self.moe_layers = vocab, num_hidden_layers, moe_layers
        self.top_k, self.num_experts, self.switch_after = top_k, num_experts, switch_after
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.version = "0"
        self.fail_next: tuple[int, str] | None = None  # (HTTP status, body) for the next call
        self.hold_over = hold_over
        self._held: dict[str, threading.Event] = {}  # rid -> set by its /abort_request
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeSGLang:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            for released in self._held.values():
                released.set()
        self._server.shutdown()
        self._server.server_close()

    def paths(self) -> list[str]:
        return [path for path, _ in self.calls]

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        with self._lock:
            self.calls.append((path, body))
            if self.fail_next is not None:
                (status, text), self.fail_next = self.fail_next, None
                return status, text
            held = None
            if path == "/generate":
                n = body["sampling_params"]["max_new_tokens"]
                if self.hold_over is None or n <= self.hold_over:
                    return 200, self.generate(body)
                held = self._held[body["rid"]] = threading.Event()
            if path == "/abort_request" and body.get("rid") in self._held:
                self._held.pop(body["rid"]).set()
            if path in ("/update_weights_from_tensor", "/update_weights_from_distributed"):
                self.version = body["weight_version"]
            if held is None:
                return 200, {"success": True, "message": "ok"}
        held.wait()  # outside the lock: the abort that releases it is another call
        with self._lock:
            return 200, self.generate(body, aborted=True)

    def generate(self, body: dict[str, Any], *, aborted: bool = False) -> dict[str, Any]:
        prompt, sp = body["input_ids"], body["sampling_params"]
        n = ABORTED_TOKENS if aborted else sp["max_new_tokens"]
        out = [(prompt[-1] + i + 1) % self.vocab for i in range(n)]
        finish: dict[str, Any] = ({"type": "abort", "message": "aborted"} if aborted else
                                  {"type": "length", "length": n})
        stops = [i for i, t in enumerate(out) if t in sp.get("stop_token_ids", ())]
        if stops:
            n, out = stops[0] + 1, out[:stops[0] + 1]
            finish = {"type": "stop", "matched": out[-1]}
        spans = [{"version": self.version, "start": 0, "end": n}]
        if body.get("rid", "").startswith("switch") and n > self.switch_after:
            new = str(int(self.version) + 1)
            spans = [{"version": self.version, "start": 0, "end": self.switch_after},
                     {"version": new, "start": self.switch_after, "end": n}]
        meta: dict[str, Any] = {
            "id": body.get("rid"), "finish_reason": finish,
            "prompt_tokens": len(prompt), "completion_tokens": n, "cached_tokens": 0,
            "output_token_logprobs": [[-0.1 * (i + 1), t, None] for i, t in enumerate(out)],
            "weight_version": spans[-1]["version"], "weight_versions": spans}
        if body.get("return_routed_experts"):
            meta["routed_experts"] = sglang_routing(
                len(prompt) + n, body.get("routed_experts_start_len", 0), self.layers,
                self.moe_layers, self.top_k, self.num_experts)
        return {"text": "", "output_ids": out, "meta_info": meta}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                status, answer = fake.answer(self.path, body)
                data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        return Handler
