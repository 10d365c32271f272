"""Weight updates of a running vLLM server, stamped with our version numbers.

One update is a session over vLLM's RL endpoints (vllm 0.32, `entrypoints/rl/online/
api_router.py` and `entrypoints/serve/dev/`; the server needs `VLLM_SERVER_DEV_MODE=1`):

    POST /pause?mode=keep|abort                 # keep: requests stay queued, frozen
    push the tensors                            # file: reload_weights; nccl: start/update/finish
    POST /reset_prefix_cache?reset_running_requests=true   # retract: running KV recomputed
    POST /update_weight_version {"new_version": "v"}       # what vLLM stamps on later tokens
    POST /resume                                # always, even when the push failed

`/update_weight_version` labels every token sampled afterwards (`weight_versions` spans of the
generate answer), which is how vLLM's per-token versions become ours.

Two ways to push:
- `FileReload` (CPU, or any server that shares a filesystem with the producer): the tensors are
  written as `<dir>/v<version>/model.safetensors` and the server reloads them in place with
  `POST /collective_rpc {"method": "reload_weights", "kwargs": {"weights_path": dir}}`
  (`Worker.reload_weights` → `model_loader/reload/inplace.py`: the model's own `load_weights`
  over the checkpoint-format tensors, so HF names work as they are). No restart.
- `NCCLWeightSender` (GPUs; vLLM's documented RL path, backend "nccl"): we are rank 0 of
  vLLM's trainer-worker NCCL group, joined by a unique id we mint (`nccl_unique_id_b64`,
  `distributed/weight_transfer/nccl_common.py`), so the producer needs no vLLM import. The server
  runs with `--weight-transfer-config '{"backend": "nccl"}'`; `/init_weight_transfer_engine`
  once, then per update `/start_weight_update`, `/update_weights {update_info: {names,
  dtype_names, shapes}}` while we broadcast each tensor in that order (unpacked), and
  `/finish_weight_update {weight_version}`.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import save_file
from torch import Tensor

from streamrl.producers.remote.engine import PauseMode
from streamrl.producers.vllm.http import VLLMHTTP


def update_session(http: VLLMHTTP, push: Callable[[], None], version: int, *,
                   pause_mode: PauseMode) -> None:
    """Pause, push, relabel, resume. "retract" (the default) preempts running requests so their
    KV is recomputed with the new weights, and clears the prefix cache; "in_place" keeps running
    requests and their KV, as the embedded engine does (the prefix cache is cleared only if no
    request holds blocks: run such a server with `--no-enable-prefix-caching`); "abort" ends
    running requests (they come back with finish reason "abort")."""
    http.call("/pause", query={"mode": "abort" if pause_mode == "abort" else "keep"})
    try:
        push()
        http.call("/reset_prefix_cache",
                  query={"reset_running_requests": str(pause_mode != "in_place").lower()})
        http.call("/update_weight_version", {"new_version": str(version)})
    finally:
        http.call("/resume")


def with_tied_head(tensors: Mapping[str, Tensor], tied: bool) -> Mapping[str, Tensor]:
    """`tensors` plus `lm_head.weight` = the embedding, for a model with tied embeddings.
    Why: vLLM 0.32's layerwise reload (file and NCCL updates alike) re-materializes each
    layer's parameters, which unties `lm_head` from `embed_tokens`; an update without the head
    leaves the old embedding as the output layer (measured: logprobs off by up to 3.6 nats on the
    tiny Qwen3; exact again with the head sent, tests/vllm/test_vllm_server.py)."""
    if not tied or "lm_head.weight" in tensors or "model.embed_tokens.weight" not in tensors:
        return tensors
    return {**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"]}


def cpu_tensors(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous CPU copies safetensors can write; tied tensors (one storage under two names)
    get a copy each, since safetensors refuses shared storage."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        out[name] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out


class FileReload:
    """Pushes a version through a directory the server can read (`directory`, e.g. /dev/shm/x):
    one `v<version>/` per update, the previous one deleted once the server has reloaded."""

    def __init__(self, http: VLLMHTTP, directory: Path, *, config_json: Path | None) -> None:
        self.http, self.directory, self.config_json = http, directory, config_json
        self._current: Path | None = None

    def push(self, tensors: Mapping[str, Tensor], version: int) -> None:
        target = self.directory / f"v{version}"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        save_file(cpu_tensors(tensors), str(target / "model.safetensors"))
        if self.config_json is not None:
            shutil.copyfile(self.config_json, target / "config.json")
        self.http.call("/collective_rpc", {"method": "reload_weights",
                                           "kwargs": {"weights_path": str(target)}})
        previous, self._current = self._current, target
        if previous is not None and previous != target:
            shutil.rmtree(previous, ignore_errors=True)

    def close(self) -> None:
        if self._current is not None:
            shutil.rmtree(self._current, ignore_errors=True)
            self._current = None


class Communicator(Protocol):
    """Rank 0's side of an NCCL group (`TorchNCCL`; tests pass a recorder)."""

    def all_reduce_one(self) -> None: ...
    def broadcast(self, tensor: Tensor) -> None: ...


class TorchNCCL:
    """An NCCL communicator from torch's own NCCL bindings (`torch.cuda.nccl`), rank 0 of
    `world_size`, joined by `unique_id` (128 bytes of `ncclGetUniqueId`)."""

    def __init__(self, unique_id: bytes, world_size: int, device: torch.device) -> None:
        self.device = device
        with torch.cuda.device(device):
            self.comm = torch.cuda.nccl.init_rank(world_size, unique_id, 0)

    def all_reduce_one(self) -> None:
        """The warm-up vLLM's communicator issues right after init (`PyNcclCommunicator.
        _init_comm`: one float32 zero, summed); every peer must match it."""
        data = torch.zeros(1, device=self.device)
        torch.cuda.nccl.all_reduce([data], comms=[self.comm])
        torch.cuda.synchronize(self.device)

    def broadcast(self, tensor: Tensor) -> None:
        torch.cuda.nccl.broadcast([tensor], root=0, comms=[self.comm])


def init_payload(unique_id: bytes, num_server_ranks: int) -> dict[str, object]:
    """`/init_weight_transfer_engine`'s body: vLLM's `NCCLWeightTransferInitInfo` by unique id
    (standard base64), the server's workers at ranks 1..num_server_ranks, unpacked."""
    return {"init_info": {"nccl_unique_id_b64": base64.b64encode(unique_id).decode(),
                          "rank_offset": 1, "world_size": 1 + num_server_ranks,
                          "packed": False}}


def update_payload(tensors: Mapping[str, Tensor]) -> dict[str, object]:
    """`/update_weights`' body: vLLM's `NCCLWeightTransferUpdateInfo` (names, dtype names as
    `getattr(torch, name)` reads them, shapes), in the order we broadcast."""
    return {"update_info": {
        "names": list(tensors),
        "dtype_names": [str(t.dtype).removeprefix("torch.") for t in tensors.values()],
        "shapes": [list(t.shape) for t in tensors.values()]}}


class NCCLWeightSender:
    """Broadcasts versions to a vLLM server's workers over NCCL (see the module docstring).
    `connect()` once (the server blocks in `/init_weight_transfer_engine` until we join), then
    `push` per version inside an `update_session`."""

    def __init__(self, http: VLLMHTTP, *, num_server_ranks: int = 1,
                 device: torch.device | str = "cuda",
                 communicator: Callable[[bytes, int], Communicator] | None = None,
                 unique_id: Callable[[], bytes] | None = None) -> None:
        self.http, self.num_server_ranks, self.device = http, num_server_ranks, torch.device(device)
        self._make = communicator or (lambda uid, n: TorchNCCL(uid, n, self.device))
        self._unique_id = unique_id or torch.cuda.nccl.unique_id
        self.comm: Communicator | None = None

    def connect(self) -> None:
        uid = self._unique_id()
        joined = self.http.submit("/init_weight_transfer_engine",
                                  init_payload(uid, self.num_server_ranks))
        comm = self._make(uid, 1 + self.num_server_ranks)
        comm.all_reduce_one()
        joined.result()
        self.comm = comm

    def push(self, tensors: Mapping[str, Tensor], version: int) -> None:
        if self.comm is None:
            self.connect()
        assert self.comm is not None
        tensors = {k: v.detach().to(self.device).contiguous() for k, v in tensors.items()}
        self.http.call("/start_weight_update")
        received = self.http.submit("/update_weights", update_payload(tensors))
        for tensor in tensors.values():
            self.comm.broadcast(tensor)
        received.result()
        self.http.call("/finish_weight_update", {"weight_version": str(version)})

    def close(self) -> None:
        if self.comm is not None:
            self.http.call("/shutdown_weight_transfer_engine")
            self.comm = None
