"""DeepSeek-V3 / Kimi K2 (`deepseek_v3`): YaRN rope and multi-head latent attention compute what
transformers computes, the engine caches only the latent (kv_lora_rank + qk_rope_head_dim per
token and layer) and its logprobs are the trainer's, with and without routing replay."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from streamrl.hooks.generation import GenerationRequest, SamplingParams
from streamrl.models import KVCache, ModelConfig, load_checkpoint, save_checkpoint
from streamrl.models.checkpoint import read_safetensors
from streamrl.models.layers import RotaryEmbedding
from streamrl.models.mla import MLAttention
from streamrl.models.rope import (
    YarnRope,
    inverse_frequencies,
    mla_softmax_scale,
    parse_rope,
    rope_attention_factor,
    rope_to_hf,
)
from streamrl.producers.engine import EngineConfig, TorchEngine
from tests.engine.engine_util import LOGPROB_ATOL, prompt, teacher_forced
from tests.models.tiny import ATOL, Tiny, batch, build, randomize

transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, yarn_apply_mscale  # noqa: E402
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf_ds  # noqa: E402

# rope settings as the released config.json files spell them (legacy `rope_scaling`), plus
# cases that exercise every branch of transformers' YaRN.
YARN = {
    "deepseek_v3": dict(rope_theta=10_000, max_position_embeddings=163_840, rope_scaling={
        "type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
        "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}),
    "kimi_k2": dict(rope_theta=50_000.0, max_position_embeddings=131_072, rope_scaling={
        "type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096,
        "beta_fast": 1.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}),
    "qwen_long": dict(rope_theta=1_000_000.0, max_position_embeddings=131_072, rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32_768}),
    "mscales_differ": dict(rope_theta=10_000.0, max_position_embeddings=1024, rope_scaling={
        "rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 64,
        "mscale": 0.707, "mscale_all_dim": 1.3, "truncate": False}),
    "attention_factor": dict(rope_theta=10_000.0, max_position_embeddings=512, rope_scaling={
        "rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 64,
        "attention_factor": 0.9, "beta_fast": 16, "beta_slow": 2, "mscale_all_dim": 0.8}),
}
ROPE_DIM = 64


@pytest.mark.parametrize("name", sorted(YARN))
def test_yarn_equals_transformers(name: str) -> None:
    """Frequencies to the bit, the cos/sin factor and MLA's softmax scale exactly as
    transformers' rope init and `yarn_apply_mscale` give them, from the same config.json."""
    raw = {**YARN[name], "model_type": "deepseek_v3"}
    theta, scaling = parse_rope(raw)
    assert isinstance(scaling, YarnRope)
    hf = transformers.DeepseekV3Config(qk_rope_head_dim=ROPE_DIM, **YARN[name])
    ref_freq, ref_factor = ROPE_INIT_FUNCTIONS["yarn"](hf)
    assert torch.equal(inverse_frequencies(ROPE_DIM, theta, scaling), ref_freq)
    assert rope_attention_factor(scaling) == ref_factor
    qk_dim = 128 + ROPE_DIM
    assert mla_softmax_scale(qk_dim, scaling) == yarn_apply_mscale(hf.rope_parameters,
                                                                   qk_dim ** (-0.5))
    # and the parameters written back read the same, in our reader and in transformers'
    assert parse_rope({"rope_parameters": rope_to_hf(theta, scaling)}) == (theta, scaling)
    again = transformers.DeepseekV3Config(qk_rope_head_dim=ROPE_DIM, rope_parameters=rope_to_hf(
        theta, scaling), max_position_embeddings=raw["max_position_embeddings"])
    assert torch.equal(ROPE_INIT_FUNCTIONS["yarn"](again)[0], ref_freq)


def test_yarn_rope_changes_what_attention_sees() -> None:
    """Against plain RoPE: long wavelengths slow down, short ones stay, and MLA's scale grows
    by m(factor, mscale_all_dim)^2 = (0.1 ln 40 + 1)^2 for DeepSeek-V3."""
    theta, yarn = parse_rope(YARN["deepseek_v3"])
    plain = inverse_frequencies(ROPE_DIM, theta, None)
    scaled = inverse_frequencies(ROPE_DIM, theta, yarn)
    assert torch.equal(scaled[:4], plain[:4])
    assert torch.allclose(scaled[-4:], plain[-4:] / 40)
    m = 0.1 * np.log(40) + 1
    assert mla_softmax_scale(192, yarn) == pytest.approx(192**-0.5 * m * m, rel=1e-12)
    assert rope_attention_factor(yarn) == 1.0  # mscale == mscale_all_dim


def test_unknown_rope_type_is_refused() -> None:
    with pytest.raises(ValueError, match=r"rope_scaling.rope_type.*longrope"):
        parse_rope({"rope_scaling": {"type": "longrope", "factor": 4.0}})
    with pytest.raises(ValueError, match=r"rope_parameters.*yarn.*factor"):
        parse_rope({"rope_parameters": {"rope_type": "yarn", "factor": "big",
                                        "original_max_position_embeddings": 64}})


def test_yarn_in_a_gqa_family_matches_transformers(tmp_path: Path) -> None:
    """YaRN is not MLA's alone: a Qwen3 with Qwen's long-context YaRN (cos/sin scaled by
    0.1 ln 4 + 1) gives transformers' logits, and the fused CUDA decode, whose rotary does not
    scale cos/sin, refuses it."""
    tiny = build(tmp_path, moe=False, rope_parameters={
        "rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
        "original_max_position_embeddings": 64})
    model = load_checkpoint(tiny.path)
    assert rope_attention_factor(model.config.rope_scaling) == pytest.approx(1.1386, abs=1e-4)
    tokens, positions = batch(2, 40)
    with torch.no_grad():
        assert (model(tokens, positions).logits - tiny.ref(tokens).logits).abs().max() <= ATOL
    pytest.importorskip("triton")
    from streamrl.producers.engine.cuda.decoder import unsupported_reason

    assert "attention factor" in unsupported_reason(model)


def hf_config(**overrides) -> transformers.DeepseekV3Config:
    """A tiny DeepSeek-V3: 3 layers (the first dense), 8 experts in 2 groups, MLA with
    q_lora_rank, interleaved YaRN rope whose mscale_all_dim changes the softmax scale."""
    fields = dict(
        vocab_size=300, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=24,
        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,
        n_routed_experts=8, n_group=2, topk_group=1, num_experts_per_tok=2, n_shared_experts=1,
        first_k_dense_replace=1, routed_scaling_factor=2.5, max_position_embeddings=256,
        initializer_range=0.08, rope_interleave=True,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10_000.0, "factor": 4.0,
                         "original_max_position_embeddings": 64, "mscale": 1.0,
                         "mscale_all_dim": 0.8})
    return transformers.DeepseekV3Config(**{**fields, **overrides})


@pytest.mark.parametrize(("q_lora_rank", "rope", "interleave"), [
    (None, None, True), (24, None, False), (24, "yarn", True), (None, "yarn", False)])
def test_attention_matches_transformers(q_lora_rank, rope, interleave) -> None:
    """MLAttention on DeepseekV3Attention's own weights: same output within 1e-5 (fp32), with
    a plain q_proj or the low-rank q path, with YaRN's scales, with interleaved rotary."""
    extra = {} if rope else {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}
    hf = hf_config(q_lora_rank=q_lora_rank, rope_interleave=interleave, **extra)
    hf._attn_implementation = "sdpa"
    torch.manual_seed(0)
    ref = hf_ds.DeepseekV3Attention(hf, 0).eval()
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.2)
    config = ModelConfig.from_hf_dict(hf.to_dict())
    ours = MLAttention(config, 0)
    ours.load_state_dict(ref.state_dict(), strict=True)  # transformers' parameter names
    x = torch.randn(2, 12, 64)
    positions = torch.arange(12)[None].expand(2, -1)
    cos, sin = hf_ds.DeepseekV3RotaryEmbedding(hf)(x, positions)
    our_cos, our_sin = RotaryEmbedding(config.rotary_dim, config.rope_theta,
                                       config.rope_scaling)(positions, x.dtype)
    assert torch.equal(our_cos, cos) and torch.equal(our_sin, sin)
    with torch.no_grad():
        want, got = ref(x, (cos, sin), None)[0], ours(x, cos, sin, None)
    assert (got - want).abs().max().item() <= 1e-5
    assert ours.scale == ref.scaling


@pytest.mark.parametrize("absorb", [True, False])
def test_cached_decode_reads_latents_and_equals_a_full_forward(absorb: bool) -> None:
    """The cache keeps one row of kv_lora_rank + qk_rope_head_dim per token and layer and no v;
    a prefill then token-by-token decode through it, absorbing kv_b_proj into q and o or
    up-projecting the cached latents, equals one forward over the whole sequence."""
    config = ModelConfig.from_hf_dict(hf_config().to_dict())
    torch.manual_seed(1)
    attn = MLAttention(config, 0)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.2)
    attn.use_absorption = absorb
    cache = KVCache.for_model(config, num_slots=2, max_seq_len=32, block_size=4)
    assert cache.k.shape == (3, 16, 4, 1, 32 + 8) and cache.v.numel() == 0
    assert KVCache.bytes_per_block(config, 16, torch.bfloat16) == 3 * 16 * (32 + 8) * 2
    x = torch.randn(2, 20, 64)
    positions = torch.arange(20)[None].expand(2, -1)
    cos, sin = RotaryEmbedding(8, config.rope_theta, config.rope_scaling)(positions, x.dtype)
    with torch.no_grad():
        full = attn(x, cos, sin, None)
        step = cache.step(positions[:, :9], None)  # a fresh prefill: stores, attends itself
        parts = [attn(x[:, :9], cos[:, :9], sin[:, :9], step.attention_mask(), step)]
        for t in range(9, 20):
            step = cache.step(positions[:, t : t + 1], None)
            parts.append(attn(x[:, t : t + 1], cos[:, t : t + 1], sin[:, t : t + 1],
                              step.attention_mask(), step))
    assert attn.absorb is absorb
    assert (torch.cat(parts, dim=1) - full).abs().max().item() <= 1e-5


def test_fused_cuda_decode_refuses_mla() -> None:
    pytest.importorskip("triton")
    from streamrl.models import CausalLM
    from streamrl.producers.engine.cuda.decoder import unsupported_reason

    model = CausalLM(ModelConfig.from_hf_dict(hf_config().to_dict()))
    assert "latent attention" in unsupported_reason(model)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tiny:
    """A tiny DeepSeek-V3 written by transformers: norm gains and the router's correction
    bias randomized so routing and attention are far from uniform."""
    torch.manual_seed(5)
    ref = transformers.DeepseekV3ForCausalLM(hf_config()).eval()
    randomize(ref)
    path = tmp_path_factory.mktemp("deepseek_v3")
    ref.save_pretrained(path)
    return Tiny(path, ref)


def test_logits_match_transformers(tiny: Tiny) -> None:
    model = load_checkpoint(tiny.path)
    assert model.config.is_mla and model.config.moe_layers == (1, 2)
    tokens, positions = batch(3, 40)
    with torch.no_grad():
        ours, ref = model(tokens, positions).logits, tiny.ref(tokens).logits
    assert (ours - ref).abs().max().item() <= ATOL
    assert ref.std(dim=-1).min() > 0.1


def test_packed_rows_match_transformers_per_sequence(tiny: Tiny) -> None:
    """Training packs sequences back to back (positions restart): MLA keeps them apart."""
    model = load_checkpoint(tiny.path)
    (a, b), _ = batch(2, 24, seed=3)
    tokens = torch.cat([a, b[:20]])[None]
    positions = torch.cat([torch.arange(24), torch.arange(20)])[None]
    with torch.no_grad():
        packed = model(tokens, positions).logits[0]
        ref_a, ref_b = tiny.ref(a[None]).logits[0], tiny.ref(b[None, :20]).logits[0]
    assert (packed[:24] - ref_a).abs().max() <= ATOL
    assert (packed[24:] - ref_b).abs().max() <= ATOL


def test_save_load_in_transformers_is_exact(tiny: Tiny, tmp_path: Path) -> None:
    model = load_checkpoint(tiny.path)
    save_checkpoint(model, tmp_path)
    original, ours = read_safetensors(tiny.path), read_safetensors(tmp_path)
    assert ours.keys() == original.keys()
    assert all(torch.equal(ours[k], original[k]) for k in original)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "yarn"
    again = transformers.DeepseekV3ForCausalLM.from_pretrained(tmp_path).eval()
    tokens, _ = batch(1, 16)
    with torch.no_grad():
        assert torch.equal(again(tokens).logits, tiny.ref(tokens).logits)


def test_engine_caches_latents_and_logprobs_equal_trainer(tiny: Tiny) -> None:
    """The paged engine with prefix sharing (a group of equal prompts), prefix caching (a
    next turn) and preemption (a pool too small for all) holds a pool of latent rows, sized by
    latent bytes; every sample's logprobs equal a teacher-forced forward, and replaying its
    recorded routing reproduces them."""
    config = EngineConfig(max_batch_size=3, max_seq_len=64, kv_block_size=4, kv_blocks=17,
                          prefix_sharing=True, prefix_caching=True)  # 17: one sequence's worth
    eng = TorchEngine(load_checkpoint(tiny.path), config)
    c = eng.model.config
    assert eng.cache.k.shape[-2:] == (1, c.kv_lora_rank + c.qk_rope_head_dim)
    assert eng.cache.v.numel() == 0
    assert KVCache.bytes_per_block(c, 4, torch.float32) == 3 * 4 * (32 + 8) * 4

    def ask(name: str, tokens: list[int]) -> GenerationRequest:
        params = SamplingParams(max_new_tokens=8, temperature=1.0)
        return GenerationRequest(request_id=name, prompt_tokens=tokens, params=params)

    group = [ask(f"g{i}", prompt(13, seed=1)) for i in range(2)] + [ask("o", prompt(33, seed=2))]
    results = eng.generate(group)
    first = results[0]
    follow_up = [*first.prompt_tokens.tolist(), *first.response_tokens.tolist(), 7, 8, 9]
    results += eng.generate([ask("next", follow_up)])
    assert eng.stats["num_cached_prefix_tokens"] > 0  # the next turn reused cached latents
    assert eng.stats["num_preemptions"] > 0
    for r in results:
        logp, routed, _ = teacher_forced(eng.model, r, 1.0)
        assert np.abs(logp - r.logprobs).max() <= LOGPROB_ATOL
        replayed, _, _ = teacher_forced(eng.model, r, 1.0, replay=True)
        assert np.abs(replayed - r.logprobs).max() <= LOGPROB_ATOL
        assert r.routed_experts is not None
        np.testing.assert_array_equal(routed[len(r.prompt_tokens) - 1 : -1], r.routed_experts)

