"""The GPU weight path of the vLLM adapter (producers/vllm/weights.py), which cannot run here: the
HTTP sequence of one NCCL update session against a local recorder, the broadcast order against
a recording communicator, and our payloads against vLLM's own dataclasses (`nccl_common.
NCCLWeightTransferInitInfo`, `nccl_engine.NCCLWeightTransferUpdateInfo`) in the vLLM venv."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from streamrl.producers.vllm import VLLMHTTP, NCCLWeightSender, VLLMError
from streamrl.producers.vllm.weights import init_payload, update_payload, update_session

UID = bytes(range(128))
TENSORS = {"model.embed_tokens.weight": torch.ones(4, 2),
           "model.norm.weight": torch.arange(2, dtype=torch.bfloat16)}


class Recorder:
    """An HTTP endpoint that answers `{}` to everything and records (path with query, body);
    `fail` names a path that answers 500."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.fail: str | None = None
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                recorder.calls.append((self.path, body))
                code = 500 if recorder.fail and self.path.startswith(recorder.fail) else 200
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [p for p, _ in self.calls]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.httpd.shutdown()


class Comm:
    def __init__(self, uid: bytes, world_size: int) -> None:
        self.uid, self.world_size, self.events = uid, world_size, []

    def all_reduce_one(self) -> None:
        self.events.append("warm-up")

    def broadcast(self, tensor: torch.Tensor) -> None:
        self.events.append(tensor.clone())


def test_an_nccl_update_is_one_session_in_vllms_order(recorder: Recorder) -> None:
    http = VLLMHTTP(recorder.url)
    comms: list[Comm] = []
    sender = NCCLWeightSender(http, num_server_ranks=2, device="cpu",
                              communicator=lambda uid, n: comms.append(Comm(uid, n)) or comms[-1],
                              unique_id=lambda: UID)
    update_session(http, lambda: sender.push(TENSORS, 1), 1, pause_mode="retract")
    assert recorder.paths() == [
        "/pause?mode=keep", "/init_weight_transfer_engine", "/start_weight_update",
        "/update_weights", "/finish_weight_update",
        "/reset_prefix_cache?reset_running_requests=true", "/update_weight_version", "/resume"]
    body = dict(recorder.calls)
    assert body["/init_weight_transfer_engine"] == init_payload(UID, 2)
    assert body["/update_weights"]["update_info"] == {
        "names": list(TENSORS), "dtype_names": ["float32", "bfloat16"],
        "shapes": [[4, 2], [2]]}
    assert body["/finish_weight_update"] == {"weight_version": "1"}
    assert body["/update_weight_version"] == {"new_version": "1"}
    [comm] = comms
    assert (comm.uid, comm.world_size) == (UID, 3)  # rank 0 + two server workers
    assert comm.events[0] == "warm-up"  # vLLM's communicator all-reduces once at init
    for sent, tensor in zip(comm.events[1:], TENSORS.values(), strict=True):
        assert torch.equal(sent, tensor)  # broadcast in the order update_info names

    recorder.calls.clear()  # a second version reuses the group
    update_session(http, lambda: sender.push(TENSORS, 2), 2, pause_mode="abort")
    assert recorder.paths()[:2] == ["/pause?mode=abort", "/start_weight_update"]
    http.close()


def test_a_failed_push_still_resumes_generation(recorder: Recorder) -> None:
    http = VLLMHTTP(recorder.url)
    recorder.fail = "/collective_rpc"

    def push() -> None:
        http.call("/collective_rpc", {"method": "reload_weights"})

    with pytest.raises(VLLMError, match="HTTP 500"):
        update_session(http, push, 1, pause_mode="in_place")
    assert recorder.paths() == ["/pause?mode=keep", "/collective_rpc", "/resume"]
    http.close()


@pytest.mark.slow
def test_our_nccl_payloads_are_what_vllms_dataclasses_accept() -> None:
    """Decoded by vLLM 0.32's own classes, in its venv: the unique id round-trips, the ranks
    and wire mode are ours, every dtype name resolves to the tensor's dtype."""
    code = """
import json, sys, torch
from vllm.distributed.weight_transfer.nccl_engine import (
    NCCLWeightTransferInitInfo, NCCLWeightTransferUpdateInfo)
init, update = json.loads(sys.stdin.read())
info = NCCLWeightTransferInitInfo(**init["init_info"])
assert info.nccl_unique_id_bytes == bytes(range(128)), info
assert (info.rank_offset, info.world_size, info.packed) == (1, 3, False)
upd = NCCLWeightTransferUpdateInfo(**update["update_info"])
print(json.dumps([str(getattr(torch, d)) for d in upd.dtype_names]))
"""
    from tests.vllm.real import vllm_python  # here: the GPU test imports this module's Recorder

    payloads = json.dumps([init_payload(UID, 2), update_payload(TENSORS)])
    out = subprocess.run([str(vllm_python()), "-c", code], input=payloads, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [
        str(t.dtype) for t in TENSORS.values()]
