"""Weight updates of a running SGLang server, stamped with our version numbers.

One update is a session (SGLang's HTTP endpoints, python/sglang/srt/entrypoints/http_server.py):

    POST /pause_generation {"mode": M}     # in_place: keep requests and their KV; retract: requeue
    POST /begin_weight_update {}           # SGLang >= 0.5.21 (`weight_update_session`)
    POST /update_weights_from_tensor  or  /update_weights_from_distributed   (weight_version=str(v))
    POST /end_weight_update {}
    POST /continue_generation {}

`weight_version` is what SGLang stamps on every token sampled afterwards (`meta_info
["weight_versions"]` spans), so pushing `str(version)` is what maps SGLang's per-token versions
onto ours. Colocated (trainer and server share the GPUs): `update_weights_from_tensor` takes, per
tensor-parallel rank, base64 of a `ForkingPickler` dump of `[(name, tensor), ...]` (what SGLang's
`MultiprocessingSerializer` reads): CUDA tensors travel as IPC handles, no copy. Disaggregated:
`DistributedWeightSender` joins the server's NCCL group as rank 0 (`init_weights_update_group`)
and broadcasts each tensor while the server receives them (`update_weights_from_distributed`).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from datetime import timedelta
from multiprocessing.reduction import ForkingPickler

import torch
import torch.multiprocessing  # registers the tensor reducers ForkingPickler uses
from torch import Tensor

from streamrl.producers.remote.engine import PauseMode
from streamrl.producers.sglang.http import SGLangHTTP


def serialize_named_tensors(tensors: Mapping[str, Tensor]) -> str:
    """One rank's `serialized_named_tensors` entry: base64 of a ForkingPickler dump."""
    buf = io.BytesIO()
    ForkingPickler(buf).dump(list(tensors.items()))
    return base64.b64encode(buf.getvalue()).decode()


def update_session(http: SGLangHTTP, push: Callable[[], None], *, pause_mode: PauseMode,
                   session: bool) -> None:
    """Pause, (begin), push, (end), continue. Generation continues even if the push fails, so a
    failed update leaves a server serving the old weights, never a paused one."""
    http.call("/pause_generation", {"mode": pause_mode})
    try:
        if session:
            http.call("/begin_weight_update", {})
        try:
            push()
        finally:
            if session:
                http.call("/end_weight_update", {})
    finally:
        http.call("/continue_generation", {})


def push_tensors(http: SGLangHTTP, tensors: Mapping[str, Tensor], version: int, *,
                 tp_size: int = 1, flush_cache: bool = False) -> None:
    """Colocated update. Every TP rank gets the full tensors (it slices its own shard), so the
    one serialization is repeated `tp_size` times."""
    entry = serialize_named_tensors(tensors)
    http.call("/update_weights_from_tensor", {
        "serialized_named_tensors": [entry] * tp_size, "load_format": None,
        "flush_cache": flush_cache, "weight_version": str(version)})


def distributed_payload(tensors: Mapping[str, Tensor], version: int, group_name: str,
                        flush_cache: bool) -> dict:
    return {"names": list(tensors), "dtypes": [str(t.dtype).removeprefix("torch.")
                                               for t in tensors.values()],
            "shapes": [list(t.shape) for t in tensors.values()], "group_name": group_name,
            "flush_cache": flush_cache, "weight_version": str(version)}


def init_group(backend: str, master_address: str, master_port: int, world_size: int, rank: int,
               group_name: str, timeout: timedelta = timedelta(minutes=10)
               ) -> torch.distributed.ProcessGroup:
    """A process group outside torch's default one, rendezvousing the way SGLang's receivers do:
    a TCP store at `master_address:master_port`, keys under the `group_name` prefix."""
    from torch.distributed import distributed_c10d as c10d

    store, rank, world_size = next(c10d.rendezvous(
        f"tcp://{master_address}:{master_port}", rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    prefixed = c10d.PrefixStore(group_name, store)
    group, _ = c10d._new_process_group_helper(
        world_size, rank, [], c10d.Backend(backend), prefixed, group_name=group_name,
        timeout=timeout)
    c10d._world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


class DistributedWeightSender:
    """The trainer side of disaggregated updates: rank 0 of a group with every server rank.

    `world_size` = 1 + the servers' total GPU count; server `i` takes ranks from its
    `rank_offset` on. `connect()` asks every server to join while joining itself (the
    rendezvous needs all ranks at once); `send(tensors, version)` runs one update session per
    server around the broadcasts."""

    def __init__(self, servers: list[tuple[SGLangHTTP, int]], *, master_address: str,
                 master_port: int, world_size: int, group_name: str = "weight_update_group",
                 backend: str = "nccl", pause_mode: PauseMode = "retract",
                 session: bool = True) -> None:
        self.servers, self.group_name, self.backend = servers, group_name, backend
        self.master_address, self.master_port = master_address, master_port
        self.world_size, self.pause_mode, self.session = world_size, pause_mode, session
        self.group: torch.distributed.ProcessGroup | None = None

    def connect(self) -> None:
        joins = [http.submit("/init_weights_update_group", {
            "master_address": self.master_address, "master_port": self.master_port,
            "rank_offset": offset, "world_size": self.world_size, "group_name": self.group_name,
            "backend": self.backend}) for http, offset in self.servers]
        self.group = init_group(self.backend, self.master_address, self.master_port,
                                self.world_size, 0, self.group_name)
        _wait(joins)

    def send(self, tensors: Mapping[str, Tensor], version: int, *,
             flush_cache: bool = True) -> None:
        if self.group is None:
            raise RuntimeError("call connect() before send()")
        for http, _ in self.servers:
            http.call("/pause_generation", {"mode": self.pause_mode})
            if self.session:
                http.call("/begin_weight_update", {})
        try:
            payload = distributed_payload(tensors, version, self.group_name, flush_cache)
            receives = [http.submit("/update_weights_from_distributed", payload)
                        for http, _ in self.servers]
            for tensor in tensors.values():  # the receivers post one broadcast per name, in order
                torch.distributed.broadcast(tensor, src=0, group=self.group)
            _wait(receives)
        finally:
            for http, _ in self.servers:
                if self.session:
                    http.call("/end_weight_update", {})
                http.call("/continue_generation", {})


def _wait(futures: list[Future]) -> None:
    for f in futures:
        f.result()
