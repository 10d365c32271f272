"""What each rank of a weight group does in tests/multigpu (spawned processes: importable
top-level functions). Rank 0 plays the trainer, the other ranks the engines; the queues stand in
for the weights stream of the log (announcements: locator + digest)."""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback

import torch

from streamrl.weights.broadcast import BroadcastTransport, GroupConfig
from streamrl.weights.buckets import ManifestMismatch, expected_names

BUCKET_BYTES = 4096  # smaller than "layers.0.w" (20,000 bytes): that tensor spans 5 buckets


def weights(version: int, *, wrong_shape: bool = False) -> dict[str, torch.Tensor]:
    """A model-like state: bf16 and fp32 weights, a tied head, int and bool buffers."""
    g = torch.Generator().manual_seed(version)
    embed = torch.randn(64, 32, generator=g).to(torch.bfloat16)
    return {
        "embed.weight": embed,
        "lm_head.weight": embed,  # tied
        "layers.0.w": torch.randn(100, 51 if wrong_shape else 50, generator=g),
        "norm.weight": torch.randn(32, generator=g).to(torch.bfloat16),
        "step": torch.tensor([version, 2 * version, 3], dtype=torch.int64),
        "mask": torch.rand(5, generator=g) > 0.5,
    }


def bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[n].dtype == b[n].dtype and a[n].shape == b[n].shape
        and torch.equal(a[n].reshape(-1).view(torch.uint8), b[n].reshape(-1).view(torch.uint8))
        for n in a)


def sender(address: str, world_size: int, versions: list[int], late_versions: list[int],
           announce: list[mp.Queue], results: mp.Queue) -> None:
    """Publish `versions` at once (before the group may have formed), then, once every rank has
    joined, `late_versions`; announce each to every receiver."""
    try:
        group = GroupConfig(address=address, world_size=world_size, rank=0, timeout_s=60)
        with BroadcastTransport(group, bucket_bytes=BUCKET_BYTES, wait_for_group=False) as t:
            for phase, vs in (("early", versions), ("late", late_versions)):
                if phase == "late" and not t.wait_ready(60):
                    raise TimeoutError("the group did not form")
                for v in vs:
                    try:
                        p = t.publish(v, weights(v))
                    except ManifestMismatch as e:
                        results.put(("sender", v, "mismatch", str(e)))
                        for q in announce:  # so the receivers report their side of it
                            q.put((f"broadcast://{group.group_name}/v{v:08d}", None))
                        continue
                    for q in announce:
                        q.put((p.locator, p.digest))
                    results.put(("sender", v, "published", p.digest))
                if phase == "early":
                    results.put(("sender", -1, "early-done", t.num_undelivered))
    except Exception:
        results.put(("sender", -1, "error", traceback.format_exc()))
    _exit(results, *announce)


def receiver(address: str, world_size: int, rank: int, num_loads: int, announce: mp.Queue,
             results: mp.Queue, verify_digest: bool = True, wrong_model: bool = False) -> None:
    """Load every announced version, as WeightSync does, and report what arrived.
    `wrong_model`: this rank's model has another shape for "layers.0.w"."""
    try:
        group = GroupConfig(address=address, world_size=world_size, rank=rank, timeout_s=60)
        expected = expected_names(weights(0, wrong_shape=wrong_model))
        with BroadcastTransport(group, verify_digest=verify_digest, expected=expected) as t:
            for _ in range(num_loads):
                locator, digest = announce.get(timeout=60)
                version = int(locator.rsplit("v", 1)[1])
                try:
                    got = t.load(locator, expected_digest=digest)
                except Exception as e:  # reported to the test, which asserts on it
                    results.put((rank, version, type(e).__name__, str(e)))
                    continue
                same = bit_identical(got, weights(version))
                tied = got["embed.weight"].data_ptr() == got["lm_head.weight"].data_ptr()
                results.put((rank, version, "loaded", (same, tied)))
    except Exception:
        results.put((rank, -1, "error", traceback.format_exc()))
    _exit(results)


def _exit(*queues: mp.Queue) -> None:
    """Leave without interpreter teardown once every result is flushed. Known issue: a gloo
    rank whose peers (the store's host among them) have already exited was seen once, under
    load, to abort in torch's destructors at interpreter exit ("terminate called without an
    active exception") after the transport had closed and every result was delivered."""
    for q in queues:  # what this process put must reach the others before it leaves
        q.close()
        q.join_thread()
    os._exit(0)


__all__ = ["BUCKET_BYTES", "ManifestMismatch", "bit_identical", "receiver", "sender", "weights"]
