"""Where a replayed version differs from the recorded one, tensor by tensor.

Only the digest of every version is in the log; the tensors themselves may still be held by the
run's weight transport (the last `keep_versions` of a run that is still up), or saved in a
checkpoint of that exact version. `announced_tensors` looks in that order and says where it found
them, or that only the digest is known.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import torch
from torch import Tensor

from streamrl.models.checkpoint import read_safetensors
from streamrl.schemas import CheckpointSaved, WeightVersionAnnounced
from streamrl.weights import WeightTransportError, open_transport
from streamrl.weights.inline import INLINE, load_inline

DIGEST_ONLY = "digest only (the version's tensors are no longer held by its transport, and no "\
              "checkpoint was saved at it)"


class TensorDiff(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    max_abs: float  # max |replayed - recorded|; NaN when the tensor is missing on one side
    num_differing: int
    numel: int
    note: str = ""  # "missing in the replay", "shape [2, 3] vs [3, 2]", ...


def announced_tensors(announced: WeightVersionAnnounced | None,
                      checkpoints: list[CheckpointSaved]) -> tuple[dict[str, Tensor] | None, str]:
    """The recorded tensors of a version and where they came from (`DIGEST_ONLY` if nowhere)."""
    if announced is not None and announced.transport == INLINE:  # a LoRA run's adapter
        try:
            return load_inline(announced), "the announcement (inline)"
        except WeightTransportError:
            pass
    elif announced is not None:
        try:
            transport = open_transport(announced.transport)
            tensors = transport.load(announced.locator, expected_digest=announced.digest)
            return {k: v.clone() for k, v in tensors.items()}, f"transport {announced.locator}"
        except (WeightTransportError, ValueError, OSError):
            pass
    version = announced.version if announced is not None else -1
    for ckpt in reversed(checkpoints):
        path = Path(ckpt.path)
        if ckpt.version == version and path.exists():
            return read_safetensors(path), f"checkpoint {path}"
    return None, DIGEST_ONLY


def tensor_diffs(replayed: dict[str, Tensor], recorded: dict[str, Tensor]) -> list[TensorDiff]:
    """Every tensor that differs (bitwise), in the replayed state's order; tensors stored only
    once in a checkpoint (tied embeddings) are compared where both sides have them."""
    out = []
    for name in [*replayed, *(n for n in recorded if n not in replayed)]:
        a, b = replayed.get(name), recorded.get(name)
        if a is None or b is None:
            side = "replay" if a is None else "recorded version"
            if name.endswith("lm_head.weight"):  # tied: only one copy may be stored
                continue
            numel = (a if a is not None else b).numel()  # type: ignore[union-attr]
            out.append(TensorDiff(name=name, max_abs=float("nan"), num_differing=numel,
                                  numel=numel, note=f"missing in the {side}"))
            continue
        if a.shape != b.shape or a.dtype != b.dtype:
            out.append(TensorDiff(name=name, max_abs=float("nan"), num_differing=a.numel(),
                                  numel=a.numel(), note=f"{a.dtype}{list(a.shape)} vs "
                                                        f"{b.dtype}{list(b.shape)}"))
            continue
        # Bits, not values: NaN != NaN would count as a difference, and -0.0 == 0.0 would not.
        differing = (_bits(a) != _bits(b) if a.is_floating_point()
                     else a.reshape(-1) != b.reshape(-1))
        n = int(differing.sum())
        if n:
            delta = (a.double() - b.double()).abs().reshape(-1)[differing]
            out.append(TensorDiff(name=name, max_abs=float(delta.max()), num_differing=n,
                                  numel=a.numel()))
    return out


def _bits(t: Tensor) -> Tensor:
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(ints).reshape(-1)
