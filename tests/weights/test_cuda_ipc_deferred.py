"""cuda_ipc `begin_publish` on a GPU: the trainer may change its weights as soon as it returns;
the digest computed afterwards (side stream + thread) is still that of the published weights,
cast or not, and the version loads and verifies."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch

from streamrl.weights import open_transport, weights_digest

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_weights_changed_after_begin_publish_do_not_change_the_version(
        dtype: str | None, tmp_path: Path) -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    weights = {"embed.weight": torch.randn(512, 256, device="cuda", generator=g),
               "layers.0.weight": torch.randn(1024, 256, device="cuda", generator=g),
               "step": torch.tensor([3], dtype=torch.int64, device="cuda")}
    want = {k: v.clone() for k, v in weights.items()}
    with open_transport("cuda_ipc", namespace=f"test-{uuid.uuid4().hex[:8]}",
                        directory=tmp_path, dtype=dtype) as t:
        pending = t.begin_publish(1, weights)
        with torch.no_grad():  # the next step's optimizer, queued while the digest runs
            for v in weights.values():
                if v.is_floating_point():
                    v.mul_(-3.0).add_(1.0)
        published = t.finish_publish(pending)
        assert published.digest == weights_digest(want) != weights_digest(weights)
        got = t.load(published.locator, expected_digest=published.digest, device="cpu")
        cast = torch.bfloat16 if dtype else torch.float32
        assert torch.equal(got["layers.0.weight"], want["layers.0.weight"].to(cast).cpu())
        assert t.last_timings["digest_ms"] > 0 and pending.digest_ms is not None
        second = t.begin_publish(2, weights)  # the ring moves on; the snapshot is reused
        assert t.finish_publish(second).digest == weights_digest(weights)
