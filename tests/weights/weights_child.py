"""Code the weight-transport tests run in a spawned process: a reader that shares nothing with
the publisher but the locator, as a producer on the same machine (shm) or a mounted FS (file)."""

from __future__ import annotations

import torch

from streamrl.weights import WeightTransportError, open_transport, weights_digest
from streamrl.weights.digest import dtype_name, tensor_bytes


def load_in_child(kind: str, locator: str, expected_digest: str | None) -> dict:
    """Load with a fresh reader-only transport; return what arrived, or the error it raised."""
    torch.set_num_threads(1)
    with open_transport(kind) as reader:
        try:
            tensors = reader.load(locator, expected_digest=expected_digest)
        except WeightTransportError as e:
            return {"error": type(e).__name__, "message": str(e),
                    "released": getattr(e, "released", None)}
    return {
        "tensors": {name: (dtype_name(t.dtype), tuple(t.shape), bytes(tensor_bytes(t)))
                    for name, t in tensors.items()},
        "digest": weights_digest(tensors),
        "tied": {name: t.data_ptr() for name, t in tensors.items()},
    }
