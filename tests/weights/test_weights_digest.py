"""The canonical weights digest: a function of names, dtypes, shapes and element bytes only."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from streamrl.weights import digest as digest_mod
from streamrl.weights import weights_digest


def reference_digest(tensors: dict[str, torch.Tensor], chunk: int) -> str:
    """The definition in streamrl/weights/digest.py, written out independently."""
    h = hashlib.sha256(b"streamrl.weights.v1\n")
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        chunks = b"".join(hashlib.sha256(data[i : i + chunk]).digest()
                          for i in range(0, len(data), chunk))
        entry = [name, str(t.dtype).removeprefix("torch."), list(t.shape),
                 hashlib.sha256(chunks).hexdigest()]
        h.update(json.dumps(entry, separators=(",", ":")).encode() + b"\n")
    return h.hexdigest()


def sample() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(8, 4, generator=g), "b": torch.randn(5, generator=g).bfloat16(),
            "ids": torch.arange(6), "flag": torch.tensor(True)}


def test_matches_the_documented_definition_including_multi_chunk_tensors() -> None:
    sd = {**sample(), "big": torch.randn(5 * 1024 * 1024)}  # 20 MiB: two chunks
    assert weights_digest(sd) == reference_digest(sd, digest_mod.CHUNK_BYTES)


def test_parallel_and_sequential_hashing_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    sd = {f"t{i}": torch.randn(300_000) for i in range(12)}
    monkeypatch.setattr(digest_mod, "CHUNK_BYTES", 64 * 1024)  # many chunks per tensor
    monkeypatch.setattr(digest_mod, "_num_threads", lambda: 4)
    monkeypatch.setattr(digest_mod, "_PARALLEL_MIN_BYTES", 1 << 62)
    sequential = weights_digest(sd)
    monkeypatch.setattr(digest_mod, "_PARALLEL_MIN_BYTES", 0)
    assert weights_digest(sd) == sequential == reference_digest(sd, 64 * 1024)


def test_memory_layout_order_grad_and_ties_do_not_change_it() -> None:
    sd = sample()
    base = weights_digest(sd)
    w = sd["w"]
    relaid = {"flag": sd["flag"], "ids": sd["ids"].clone(), "b": sd["b"],
              "w": w.t().contiguous().t()}  # same values, column-major memory
    assert not relaid["w"].is_contiguous()
    assert weights_digest(relaid) == base
    padded = torch.cat([torch.zeros(3), w.reshape(-1)])[3:].view(8, 4)  # nonzero offset
    assert weights_digest({**sd, "w": padded}) == base
    assert weights_digest({**sd, "w": w.clone().requires_grad_()}) == base
    tied = weights_digest({**sd, "head": sd["w"]})
    assert tied == weights_digest({**sd, "head": sd["w"].clone()})


@pytest.mark.parametrize("change", ["bit", "name", "dtype", "shape", "extra"])
def test_any_change_a_model_would_notice_changes_it(change: str) -> None:
    sd = sample()
    if change == "bit":
        b = sd["b"].clone()
        b.view(torch.int16)[0] ^= 1  # one bit of one bf16 element
        sd["b"] = b
    elif change == "name":
        sd["w2"] = sd.pop("w")
    elif change == "dtype":
        sd["w"] = sd["w"].view(torch.int32)  # same bytes, other meaning
    elif change == "shape":
        sd["w"] = sd["w"].reshape(4, 8)
    else:
        sd["zero"] = torch.empty(0)
    assert weights_digest(sd) != weights_digest(sample())


def test_is_a_sha256_hex_string_the_event_schema_accepts() -> None:
    d = weights_digest(sample())
    assert len(d) == 64 and set(d) <= set("0123456789abcdef")
