"""FP8 weight versions (streamrl/weights/fp8.py): the 128x128 block quantization, which tensors
it touches, the bytes a transport moves, and the two digests of a published version."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch

from streamrl.schemas import decode_event, encode_event
from streamrl.weights import WeightDigestMismatch, open_transport, weights_digest
from streamrl.weights.fp8 import (
    SCHEME,
    begin_publish,
    dequantize_blocks,
    dequantize_state,
    is_quantized,
    quantize_blocks,
    quantize_state,
    split_state,
)
from streamrl.weights.inline import tensor_bytes

E4M3_HALF_ULP = 2.0 ** -4  # 3 mantissa bits: rounding moves a normal value by <= 2^-4 of it


def test_a_hand_checked_block() -> None:
    """One partial block [2, 3]: amax 3.5 -> scale 3.5/448 = 1/128. Every value but 0.3 is
    exact in e4m3 after scaling (128, -256, 64, 0, 448); 0.3*128 = 38.4 rounds to 40 (spacing
    4 in [32, 64)), i.e. 0.3125: an error of 0.0125 <= 2^-4 * 0.3."""
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.5, 0.3]])
    q, scale = quantize_blocks(w)
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
    assert scale.tolist() == [[1 / 128]]
    assert q.float().tolist() == [[128.0, -256.0, 64.0], [0.0, 448.0, 40.0]]
    back = dequantize_blocks(q, scale)
    assert back.tolist() == [[1.0, -2.0, 0.5], [0.0, 3.5, 0.3125]]


def test_blocks_have_their_own_scales_and_bounded_error() -> None:
    """A [200, 300] weight is 2 x 3 blocks (the last row and column of blocks partial), whose
    magnitudes differ by 10^4: each block's scale is its own amax / 448, and every element
    comes back within e4m3's half-ulp of itself (plus the subnormal step of its block)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(200, 300, generator=g)
    w[:128, 128:256] *= 1e-4
    w[128:, 256:] = 0.0  # an all-zero block: scale 1, zeros
    q, scale = quantize_blocks(w)
    assert scale.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            block = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            amax = float(block.abs().max())
            assert float(scale[i, j]) == pytest.approx(amax / 448 if amax else 1.0, rel=1e-6)
    err = (dequantize_blocks(q, scale) - w).abs()
    step = scale.repeat_interleave(128, 0).repeat_interleave(128, 1)[:200, :300]
    assert (err <= E4M3_HALF_ULP * w.abs() + 2.0 ** -10 * step + 1e-12).all()
    small = w[:128, 128:256].abs().max()  # ~4e-4: with one scale for the whole tensor (amax
    # ~4.5) its values would sit near e4m3's subnormal range; its own scale keeps 3 bits
    assert float(err[:128, 128:256].max()) <= E4M3_HALF_ULP * float(small)
    assert (q[128:, 256:].float() == 0).all()


def _tiny_moe_state() -> dict[str, torch.Tensor]:
    """HF names of a Qwen3-MoE layer (bf16, as a trainer on the GPU hands them over)."""
    g = torch.Generator().manual_seed(1)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(torch.bfloat16)

    p = "model.layers.0."
    return {
        "model.embed_tokens.weight": r(512, 256), "lm_head.weight": r(512, 256),
        "model.norm.weight": r(256), p + "input_layernorm.weight": r(256),
        p + "self_attn.q_proj.weight": r(256, 256), p + "self_attn.q_proj.bias": r(256),
        p + "self_attn.k_proj.weight": r(128, 256), p + "self_attn.q_norm.weight": r(32),
        p + "mlp.gate.weight": r(4, 256),  # the router
        p + "mlp.experts.0.down_proj.weight": r(256, 384),
        p + "mlp.shared_expert.up_proj.weight": r(384, 256),
    }


def test_projections_are_fp8_and_everything_else_stays_bf16() -> None:
    """Quantized: q/k projections, an expert's and the shared expert's projections. Kept in
    BF16: embeddings, LM head, norms (q_norm too), biases and the router (`mlp.gate`). The
    quantized tensors' bytes are half their BF16 bytes plus 4 bytes per 128x128 block."""
    state = _tiny_moe_state()
    fp8 = quantize_state(state)
    quantized = sorted(n for n in state if is_quantized(n, state[n]))
    assert quantized == ["model.layers.0.mlp.experts.0.down_proj.weight",
                         "model.layers.0.mlp.shared_expert.up_proj.weight",
                         "model.layers.0.self_attn.k_proj.weight",
                         "model.layers.0.self_attn.q_proj.weight"]
    for name, t in state.items():
        if name in quantized:
            assert fp8[name].dtype == torch.float8_e4m3fn
            assert fp8[name + "_scale_inv"].dtype == torch.float32
        else:
            assert fp8[name].dtype == torch.bfloat16 and torch.equal(fp8[name], t)
    before = tensor_bytes({n: state[n] for n in quantized})
    after = tensor_bytes({k: v for k, v in fp8.items() if k.removesuffix("_scale_inv")
                          in quantized})
    blocks = sum(fp8[n + "_scale_inv"].numel() for n in quantized)
    assert after == before // 2 + 4 * blocks
    assert after / before < 0.501
    back = dequantize_state(fp8, torch.bfloat16)
    assert sorted(back) == sorted(state)


def test_a_weight_without_its_scale_is_refused_by_name() -> None:
    fp8 = quantize_state(_tiny_moe_state())
    del fp8["model.layers.0.self_attn.k_proj.weight_scale_inv"]
    with pytest.raises(ValueError, match=r"self_attn\.k_proj\.weight_scale_inv` is missing"):
        split_state(fp8)
    fp8 = quantize_state(_tiny_moe_state())
    fp8["model.layers.0.self_attn.q_proj.weight_scale_inv"] = torch.ones(1, 1)
    with pytest.raises(ValueError, match=r"q_proj\.weight_scale_inv` has shape \[1, 1\], "
                                         r"expected \[2, 2\]"):
        split_state(fp8)


@pytest.mark.parametrize("kind", ["file", "shm"])
def test_publish_moves_fp8_bytes_and_announces_both_digests(kind: str, tmp_path: Path) -> None:
    """Through a real transport: the transport holds (and counts) the FP8 tensors; the
    announced `digest` is the trainer's own tensors' (what replay recomputes), computed from a
    snapshot, so changing the weights after `begin_publish` changes nothing; the
    `quantized_digest` is what a reader checks the loaded tensors against, and the event
    survives the log's encoding."""
    state = {k: v.float() for k, v in _tiny_moe_state().items()}  # fp32 master weights
    trainer_digest = weights_digest(state)
    where = ({"directory": tmp_path} if kind == "file"
             else {"namespace": f"test-{uuid.uuid4().hex[:10]}"})
    with open_transport(kind, **where) as transport:
        pending = begin_publish(transport, 3, state)
        for t in state.values():  # the next training step starts at once
            t.add_(1.0)
        published = transport.finish_publish(pending)
        assert published.digest == trainer_digest
        assert published.quantization == SCHEME
        loaded = transport.load(published.locator, expected_digest=published.quantized_digest)
        assert published.quantized_digest == weights_digest(loaded)
        assert published.num_bytes == tensor_bytes(loaded)
        # fp32 projections -> 1 byte per weight + 4 per block, the fp32 rest -> bf16
        assert published.num_bytes == sum(
            t.numel() + 4 * -(-t.shape[0] // 128) * -(-t.shape[1] // 128) if is_quantized(n, t)
            else 2 * t.numel() for n, t in state.items())
        assert loaded["model.layers.0.self_attn.q_proj.weight"].dtype == torch.float8_e4m3fn
        with pytest.raises(WeightDigestMismatch):  # the trainer's digest is not the payload's
            transport.load(published.locator, expected_digest=published.digest)
        event = decode_event(encode_event(published.announce(run_id="r", parent=2)), "weights")
        assert (event.digest, event.quantized_digest, event.quantization) == (
            trainer_digest, published.quantized_digest, SCHEME)
        assert transport.retained == (published,)


@pytest.mark.parametrize(("weights", "message"), [
    ('transport = "broadcast"\ndtype = "float8_e4m3fn"', "other than \"broadcast\""),
    ('dtype = "float8_e5m2"', "float8_e5m2"),
], ids=["broadcast", "e5m2"])
def test_an_fp8_recipe_the_run_cannot_serve_is_refused_at_load(tmp_path: Path, weights: str,
                                                               message: str) -> None:
    """Before anything starts, naming what to change (the LoRA and engine_factory cases share
    the broadcast one's check)."""
    from streamrl.recipe.config import ConfigError, load_config
    from tests.helpers import TINY

    text = TINY.read_text()
    assert "[staleness]" in text
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text.replace("[staleness]", f"[weights]\n{weights}\n\n[staleness]"))
    with pytest.raises(ConfigError, match=message):
        load_config(recipe)
    recipe.write_text(text.replace("[staleness]", '[weights]\ndtype = "float8_e4m3fn"\n\n'
                                   "[staleness]"))
    assert load_config(recipe).weights.dtype == "float8_e4m3fn"
