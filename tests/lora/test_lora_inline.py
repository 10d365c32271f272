"""Small weight versions (LoRA adapters) ride inside their announcement: decoded from the log
alone, digest-checked, and larger ones still go through the transport."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import torch

from streamrl.schemas import decode_event, encode_event
from streamrl.weights import WeightDigestMismatch, open_transport, weights_digest
from streamrl.weights.inline import INLINE, load_inline, publish_version


def adapter(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(4, 64, generator=g),
            "model.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(64, 4, generator=g),
            "lora.scale": torch.tensor(2.0)}


def test_an_inline_version_is_read_back_from_the_announcement_alone(tmp_path: Path) -> None:
    tensors = adapter(0)
    with open_transport("file", directory=tmp_path / "weights") as transport:
        published = publish_version(transport, 3, tensors, inline_max_bytes=1 << 20)
        assert published.transport == INLINE and not any((tmp_path / "weights").iterdir())
        event = decode_event(encode_event(published.announce(run_id="r", parent=2)), "weights")
        loaded = load_inline(event)
        assert weights_digest(loaded) == weights_digest(tensors) == event.digest
        assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
        assert event.num_bytes == sum(t.numel() * 4 for t in tensors.values())

        # a payload that does not hash to the announced digest is refused, naming the version
        forged = msgspec.structs.replace(event, payload=publish_version(
            transport, 4, adapter(1), inline_max_bytes=1 << 20).payload)
        with pytest.raises(WeightDigestMismatch, match="weight version 3"):
            load_inline(forged)

        # over the limit: through the transport, as before
        big = publish_version(transport, 5, tensors, inline_max_bytes=100)
        assert big.transport == "file" and big.payload is None
        assert weights_digest(transport.load(big.locator)) == event.digest
