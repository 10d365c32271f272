"""Disaggregated weight updates: `DistributedWeightSender` joins a process group as rank 0 and
broadcasts each tensor while the server receives. The receiving rank here is a child process that
joins with the same rendezvous (`init_group`, gloo on CPU) and receives in name order, as SGLang's
`update_weights_from_distributed` does; the HTTP side is `FakeSGLang` (not SGLang)."""

from __future__ import annotations

import multiprocessing as mp
import socket

import torch

from streamrl.producers.sglang import DistributedWeightSender, SGLangHTTP
from streamrl.producers.sglang.weights import init_group
from tests.sglang.fake_server import FakeSGLang

TENSORS = {"model.layers.0.mlp.gate.weight": torch.arange(12.0).reshape(3, 4),
           "lm_head.weight": torch.full((2, 4), 0.5, dtype=torch.bfloat16)}


def receive(port: int, queue) -> None:
    group = init_group("gloo", "127.0.0.1", port, 2, 1, "weight_update_group")
    got = {}
    for name, t in TENSORS.items():  # what the server allocates from names/dtypes/shapes
        buf = torch.empty(t.shape, dtype=t.dtype)
        torch.distributed.broadcast(buf, src=0, group=group)
        got[name] = buf
    queue.put({k: v.float().tolist() for k, v in got.items()})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tensors_reach_the_receiving_rank_inside_one_update_session() -> None:
    port, ctx = free_port(), mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=receive, args=(port, queue))
    child.start()
    try:
        with FakeSGLang(vocab=10) as server, SGLangHTTP(server.url) as http:
            sender = DistributedWeightSender([(http, 1)], master_address="127.0.0.1",
                                             master_port=port, world_size=2, backend="gloo")
            sender.connect()
            sender.send(TENSORS, version=7)
            got = queue.get(timeout=60)
    finally:
        child.join(timeout=60)
    assert got == {k: v.float().tolist() for k, v in TENSORS.items()}
    assert server.paths() == ["/init_weights_update_group", "/pause_generation",
                              "/begin_weight_update", "/update_weights_from_distributed",
                              "/end_weight_update", "/continue_generation"]
    init, update = server.calls[0][1], server.calls[3][1]
    assert (init["rank_offset"], init["world_size"], init["backend"]) == (1, 2, "gloo")
    assert update["names"] == list(TENSORS) and update["dtypes"] == ["float32", "bfloat16"]
    assert update["shapes"] == [[3, 4], [2, 4]] and update["weight_version"] == "7"
