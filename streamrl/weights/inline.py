"""Weight versions carried inside their announcement: the tensors as safetensors bytes in
`WeightVersionAnnounced.payload`, digest-checked on load like every transport's.

A LoRA run's versions are its adapters (a few MB to tens of MB), so below `[weights]
inline_max_bytes` they ride in the weights stream itself: the run's whole weight history is in
its log, and replay, audit, fork and export need no transport files (docs/lora.md). Larger
versions go through the run's transport as before.

    published = publish_version(transport, version, tensors, inline_max_bytes=32 << 20)
    event = published.announce(run_id=..., parent=...)       # payload set when inline
    tensors = load_inline(event)                               # checked against event.digest
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from streamrl.schemas.events import WeightVersionAnnounced
from streamrl.weights.base import (
    Published,
    WeightDigestMismatch,
    WeightFormatError,
    WeightTransport,
)
from streamrl.weights.digest import weights_digest

INLINE = "inline"
"""`WeightVersionAnnounced.transport` of a version carried in its own payload."""


def tensor_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Bytes of tensor data (what an inline payload holds, less a small header)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def publish_version(transport: WeightTransport, version: int,
                    tensors: Mapping[str, torch.Tensor], *,
                    inline_max_bytes: int = 0) -> Published:
    """`tensors` inline when their data is at most `inline_max_bytes` (0: never), else
    through `transport` (`WeightTransport.publish`)."""
    num_bytes = tensor_bytes(tensors)
    if num_bytes > inline_max_bytes:
        return transport.publish(version, tensors)
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return Published(version=version, locator=f"{INLINE}://v{version:08d}",
                     digest=weights_digest(cpu), num_bytes=num_bytes, transport=INLINE,
                     payload=save_safetensors(cpu))


def load_inline(announced: WeightVersionAnnounced) -> dict[str, torch.Tensor]:
    """The tensors an inline announcement carries, verified against its digest."""
    where = announced.locator
    if announced.payload is None:
        raise WeightFormatError("the announcement carries no payload", locator=where,
                                version=announced.version)
    try:
        tensors = load_safetensors(announced.payload)
    except (SafetensorError, ValueError) as error:
        raise WeightFormatError(f"unreadable inline payload: {error}", locator=where,
                                version=announced.version) from None
    actual = weights_digest(tensors)
    if actual != announced.digest:
        raise WeightDigestMismatch(locator=where, version=announced.version,
                                   expected=announced.digest, actual=actual)
    return tensors
