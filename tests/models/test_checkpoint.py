"""Checkpoints: HF layout in, HF layout out, bit-exact, and transformers reads what we write."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from streamrl.models import load_checkpoint, save_checkpoint
from streamrl.models.checkpoint import INDEX_FILE, read_safetensors
from tests.models.tiny import ATOL, Tiny, batch


def test_save_load_round_trip_is_bit_exact(tiny: Tiny, tmp_path) -> None:
    model = load_checkpoint(tiny.path)
    save_checkpoint(model, tmp_path)
    # Same tensor names, dtypes and bytes as the file transformers wrote.
    original, ours = read_safetensors(tiny.path), read_safetensors(tmp_path)
    assert ours.keys() == original.keys()
    for name, t in original.items():
        assert ours[name].dtype == t.dtype and torch.equal(ours[name], t), name
    again = load_checkpoint(tmp_path)
    assert again.config == model.config
    for (name, a), (_, b) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    if model.config.tie_word_embeddings:
        assert again.lm_head.weight is again.model.embed_tokens.weight


def test_transformers_loads_what_we_save(tiny: Tiny, tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    model = load_checkpoint(tiny.path)
    save_checkpoint(model, tmp_path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(ref) is type(tiny.ref)
    tokens, positions = batch(2, 12)
    with torch.no_grad():
        assert torch.equal(ref(tokens).logits, tiny.ref(tokens).logits)
        assert (model(tokens, positions).logits - ref(tokens).logits).abs().max() <= ATOL


def test_sharded_checkpoints_load_and_save(moe: Tiny, tmp_path) -> None:
    tiny_shards = tmp_path / "hf_sharded"
    moe.ref.save_pretrained(tiny_shards, max_shard_size="100KB")
    assert (tiny_shards / INDEX_FILE).exists()
    model = load_checkpoint(tiny_shards)
    reference = load_checkpoint(moe.path)
    for (name, a), (_, b) in zip(
        model.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name

    ours = tmp_path / "ours_sharded"
    save_checkpoint(model, ours, max_shard_bytes=50_000)
    index = json.loads((ours / INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert not (ours / "model.safetensors").exists()
    again = load_checkpoint(ours)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    # Saving unsharded over it removes the stale index, which would otherwise win on load.
    save_checkpoint(again, ours)
    assert not (ours / INDEX_FILE).exists() and not list(ours.glob("model-*"))


def test_fused_expert_layout_loads(moe: Tiny, tmp_path) -> None:
    """A checkpoint storing experts fused ([E, 2I, H] gate_up_proj) loads to the same model."""
    tensors = load_file(moe.path / "model.safetensors")
    fused = {}
    for layer in (0, 2):  # layer 1 is dense (mlp_only_layers=[1])
        p = f"model.layers.{layer}.mlp.experts"
        E = moe.ref.config.num_experts
        gate = torch.stack([tensors.pop(f"{p}.{e}.gate_proj.weight") for e in range(E)])
        up = torch.stack([tensors.pop(f"{p}.{e}.up_proj.weight") for e in range(E)])
        fused[f"{p}.gate_up_proj"] = torch.cat([gate, up], dim=1)
        fused[f"{p}.down_proj"] = torch.stack(
            [tensors.pop(f"{p}.{e}.down_proj.weight") for e in range(E)]
        )
    save_file({**tensors, **fused}, tmp_path / "model.safetensors", {"format": "pt"})
    (tmp_path / "config.json").write_text((moe.path / "config.json").read_text())
    tokens, positions = batch(1, 10)
    with torch.no_grad():
        a = load_checkpoint(tmp_path)(tokens, positions).logits
        b = load_checkpoint(moe.path)(tokens, positions).logits
    assert torch.equal(a, b)


def test_mismatched_checkpoint_errors_name_the_tensor(dense: Tiny, tmp_path) -> None:
    tensors = load_file(dense.path / "model.safetensors")
    (tmp_path / "config.json").write_text((dense.path / "config.json").read_text())
    missing = dict(tensors)
    del missing["model.layers.1.self_attn.k_norm.weight"]
    save_file(missing, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing \['model\.layers\.1\.self_attn\.k_norm"):
        load_checkpoint(tmp_path)
    bad_shape = {**tensors, "model.norm.weight": torch.ones(63)}
    save_file(bad_shape, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"`model\.norm\.weight` has shape \[63\]"):
        load_checkpoint(tmp_path)


def test_bf16_load_keeps_checkpoint_names(dense: Tiny) -> None:
    model = load_checkpoint(dense.path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    tokens, positions = batch(1, 6)
    with torch.no_grad():
        assert model(tokens, positions).logits.dtype == torch.bfloat16
