"""`NCCLWeightSender` over real NCCL on two GPUs: the sender (rank 0, cuda:0) against a receiver
process (rank 1, cuda:1) that does what vLLM's worker does (`PyNcclCommunicator.
from_unique_id_bytes` then `NCCLWeightTransferEngine.receive_weights`, unpacked): join by the
unique id, the one-element float32 warm-up all-reduce, then one broadcast per tensor in the
update's `names` order. No vLLM GPU build runs on the project's GPU machine, so the receiver is
torch's own NCCL bindings, not vLLM; the HTTP side is the local recorder. Skips without 2 GPUs.

    PYTHONPATH=$PWD python -m pytest -q tests/vllm/test_nccl_gpu.py
"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from streamrl.producers.vllm import VLLMHTTP, NCCLWeightSender
from streamrl.producers.vllm.weights import update_session
from tests.vllm.test_weights import Recorder

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2,
                                reason="needs 2 CUDA GPUs (one NCCL rank per device)")


def receive(uid: bytes, metas: list[tuple[list[int], torch.dtype]], out: mp.Queue) -> None:
    torch.cuda.set_device(1)
    comm = torch.cuda.nccl.init_rank(2, uid, 1)
    warm = torch.zeros(1, device="cuda:1")
    torch.cuda.nccl.all_reduce([warm], comms=[comm])
    got = []
    for shape, dtype in metas:
        t = torch.empty(shape, dtype=dtype, device="cuda:1")
        torch.cuda.nccl.broadcast([t], root=0, comms=[comm])
        got.append(t.cpu())
    torch.cuda.synchronize()
    out.put(got)


def test_versions_reach_a_receiving_rank_over_nccl() -> None:
    recorder = Recorder()
    http = VLLMHTTP(recorder.url)
    tensors = {"model.embed_tokens.weight": torch.randn(320, 64, device="cuda:0"),
               "model.norm.weight": torch.randn(64, device="cuda:0").to(torch.bfloat16)}
    uid = torch.cuda.nccl.unique_id()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    metas = [(list(t.shape), t.dtype) for t in tensors.values()]
    peer = ctx.Process(target=receive, args=(uid, metas, out))
    peer.start()
    sender = NCCLWeightSender(http, num_server_ranks=1, device="cuda:0", unique_id=lambda: uid)
    update_session(http, lambda: sender.push(tensors, 1), 1, pause_mode="retract")
    got = out.get(timeout=120)
    peer.join(timeout=60)
    assert peer.exitcode == 0
    for received, sent in zip(got, tensors.values(), strict=True):
        assert torch.equal(received, sent.cpu())
    assert "/update_weights" in recorder.paths() and "/resume" in recorder.paths()
    http.close()
    recorder.httpd.shutdown()
