"""GLM-4.5 (`glm4_moe`) and the DeepSeek-style MoE block: what transformers computes, loads and
writes; routed ids equal to transformers' router; routing replay with router gradients; the
engine's logprobs are the trainer's."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from streamrl.models import ModelConfig, load_checkpoint, save_checkpoint
from streamrl.models.checkpoint import read_safetensors
from streamrl.models.moe import MoE
from tests.engine.engine_util import LOGPROB_ATOL, engine, request, teacher_forced
from tests.models.tiny import ATOL, TINY, Tiny, batch, randomize

# Every DeepSeek-style switch on: groups that cut the choice (2 of 4 groups of 2 experts),
# top-3, 2 shared experts, a routed scaling factor, a dense first layer; GLM's q/k/v bias (no o
# bias), q/k norm and half-rotary heads.
MOE = dict(moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=3, n_group=4,
           topk_group=2, n_shared_experts=2, routed_scaling_factor=2.5, norm_topk_prob=True,
           first_k_dense_replace=1)
GLM = dict(**{k: v for k, v in TINY.items() if k != "rope_parameters"}, **MOE,
           attention_bias=True, use_qk_norm=True,
           rope_parameters={"rope_type": "default", "rope_theta": 10_000.0,
                            "partial_rotary_factor": 0.5})


@pytest.fixture(scope="module")
def glm(tmp_path_factory) -> Tiny:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(11)
    ref = transformers.Glm4MoeForCausalLM(transformers.Glm4MoeConfig(**GLM))
    randomize(ref)
    path = tmp_path_factory.mktemp("glm4_moe")
    ref.eval().save_pretrained(path)
    return Tiny(path, ref)


def _hf_routing(ref: torch.nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, list]:
    """transformers' logits and each MoE layer's (ids, weights) from its own router."""
    seen: list = []
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, i, out: seen.append(out[1:]))
             for layer in ref.model.layers if hasattr(layer.mlp, "gate")]
    try:
        with torch.no_grad():
            logits = ref(tokens).logits
    finally:
        for h in hooks:
            h.remove()
    return logits, seen


def test_config_reads_what_transformers_writes(glm: Tiny) -> None:
    c = ModelConfig.from_file(glm.path)
    assert (c.model_type, c.num_experts, c.n_group, c.topk_group) == ("glm4_moe", 8, 4, 2)
    assert c.rotary_dim == 8 and c.qk_norm and c.qkv_bias and not c.o_bias
    assert c.moe_layers == (1, 2) and c.num_nextn_predict_layers == 1
    raw = json.loads((glm.path / "config.json").read_text())
    # GLM-4.5's hub config.json: partial rotary at the top level, no rope_parameters.
    hub = {**{k: v for k, v in raw.items() if k != "rope_parameters"},
           "rope_theta": 10_000.0, "partial_rotary_factor": 0.5}
    assert ModelConfig.from_hf_dict(hub) == c
    with pytest.raises(ValueError, match="n_group"):
        ModelConfig.from_hf_dict({**raw, "n_group": 3})
    with pytest.raises(ValueError, match="topk_group"):
        ModelConfig.from_hf_dict({**raw, "topk_group": 5})
    with pytest.raises(ValueError, match="scoring_func"):  # DeepSeek-V2's softmax router
        ModelConfig.from_hf_dict({**raw, "scoring_func": "softmax"})


def test_logits_and_routed_ids_match_transformers(glm: Tiny) -> None:
    model = load_checkpoint(glm.path)
    tokens, positions = batch(3, 40)
    ref_logits, ref_routing = _hf_routing(glm.ref, tokens)
    with torch.no_grad():
        out = model(tokens, positions)
    assert (out.logits - ref_logits).abs().max().item() <= ATOL
    assert ref_logits.std(dim=-1).min() > 0.1  # far from constant: the match means something
    ours = out.routed_experts.reshape(-1, 2, 3)  # [B*T, moe layers, k]
    for layer, (ref_weights, ref_ids) in enumerate(ref_routing):
        assert torch.equal(ours[:, layer].sort(-1).values, ref_ids.sort(-1).values)
        assert ref_weights.sum(-1).allclose(torch.tensor(2.5))  # normalized, then scaled


def test_correction_bias_changes_the_choice_not_the_weights(glm: Tiny) -> None:
    model = load_checkpoint(glm.path)
    tokens, positions = batch(2, 40, seed=5)
    with torch.no_grad():
        routed = model(tokens, positions).routed_experts
        for layer in model.model.layers[1:]:
            layer.mlp.gate.e_score_correction_bias.zero_()
        unbiased = model(tokens, positions).routed_experts
    changed = (routed.sort(-1).values != unbiased.sort(-1).values).any(-1).float().mean()
    assert changed > 0.2  # the bias really decides which experts run


def test_packed_rows_match_transformers_per_sequence(glm: Tiny) -> None:
    model = load_checkpoint(glm.path)
    (a, b), _ = batch(2, 24, seed=3)
    tokens = torch.cat([a, b[:20]])[None]
    positions = torch.cat([torch.arange(24), torch.arange(20)])[None]
    with torch.no_grad():
        packed = model(tokens, positions).logits[0]
        ref_a, ref_b = glm.ref(a[None]).logits[0], glm.ref(b[None, :20]).logits[0]
    assert (packed[:24] - ref_a).abs().max() <= ATOL
    assert (packed[24:] - ref_b).abs().max() <= ATOL


def test_save_load_in_transformers_is_exact(glm: Tiny, tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    model = load_checkpoint(glm.path)
    save_checkpoint(model, tmp_path)
    original, ours = read_safetensors(glm.path), read_safetensors(tmp_path)
    assert ours.keys() == original.keys()
    assert any(".mlp.shared_experts." in n for n in ours)
    assert any(n.endswith("mlp.gate.e_score_correction_bias") for n in ours)
    assert all(torch.equal(ours[n], t) for n, t in original.items())
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(ref) is type(glm.ref)
    assert ModelConfig.from_file(tmp_path) == model.config
    tokens, _ = batch(2, 30)
    with torch.no_grad():
        assert torch.equal(ref(tokens).logits, glm.ref(tokens).logits)


def test_multi_token_prediction_layers_are_skipped(glm: Tiny, tmp_path) -> None:
    """A checkpoint with GLM's MTP layer (`model.layers.{num_hidden_layers}`) loads as the
    decoder alone; a layer beyond the MTP ones is refused, naming it."""
    from safetensors.torch import save_file

    tensors = read_safetensors(glm.path)
    mtp = {n.replace("layers.2.", "layers.3."): t.clone() for n, t in tensors.items()
           if n.startswith("model.layers.2.")}
    mtp["model.layers.3.eh_proj.weight"] = torch.randn(64, 128)
    shutil.copy(glm.path / "config.json", tmp_path / "config.json")
    save_file({**tensors, **mtp}, tmp_path / "model.safetensors")
    tokens, positions = batch(1, 20)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(tmp_path)(tokens, positions).logits,
                           load_checkpoint(glm.path)(tokens, positions).logits)
    save_file({**tensors, "model.layers.4.eh_proj.weight": torch.zeros(1)},
              tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"unexpected \['model.layers.4.eh_proj.weight'\]"):
        load_checkpoint(tmp_path)


def test_routing_replay_reproduces_logprobs_and_trains_the_router(glm: Tiny) -> None:
    model = load_checkpoint(glm.path)
    tokens, positions = batch(2, 24, seed=9)
    with torch.no_grad():
        free = model(tokens, positions)
        # The policy that recorded them reproduces its own logits exactly under replay.
        again = model(tokens, positions, forced_routing=free.routed_experts)
    assert torch.equal(again.logits, free.logits)
    # Another policy (a nudged router) replaying the recorded ids sends every token to the
    # same experts; its own free routing would differ.
    with torch.no_grad():
        for layer in model.model.layers[1:]:
            layer.mlp.gate.weight.add_(0.3 * torch.randn_like(layer.mlp.gate.weight))
        assert not torch.equal(model(tokens, positions).routed_experts, free.routed_experts)
    replayed = model(tokens, positions, forced_routing=free.routed_experts)
    assert torch.equal(replayed.routed_experts, free.routed_experts)
    replayed.logits.log_softmax(-1)[..., 0].sum().backward()
    router = model.model.layers[1].mlp.gate
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0
    # The correction bias is loaded like a weight but never trained.
    assert not router.e_score_correction_bias.requires_grad
    assert router.e_score_correction_bias.grad is None


def test_engine_logprobs_equal_trainer_logprobs(glm: Tiny) -> None:
    eng = engine(glm.path, max_batch_size=2)
    results = eng.generate([request(f"r{i}", length=5 + 9 * i, max_new_tokens=10,
                                    temperature=1.0) for i in range(3)])
    worst = max(float(np.abs(teacher_forced(eng.model, r, 1.0, replay=True)[0]
                             - r.logprobs).max()) for r in results)
    assert worst <= LOGPROB_ATOL
    assert all(r.routed_experts.shape == (len(r.response_tokens), 2, 3) for r in results)


def test_deepseek_v3_moe_block_matches_transformers() -> None:
    """The DeepSeek-V3 MoE block alone (router with groups and bias, routed and shared
    experts), transformers' `DeepseekV3MoE` against ours with the same weights."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    hf_config = transformers.DeepseekV3Config(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, first_k_dense_replace=1,
        n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4, n_shared_experts=2,
        moe_intermediate_size=24, routed_scaling_factor=2.5)
    config = ModelConfig.from_hf_dict(json.loads(hf_config.to_json_string()))
    assert config.moe_layers == (1,) and config.is_mla and config.q_lora_rank is None
    torch.manual_seed(0)
    ref = DeepseekV3MoE(hf_config)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.1)
        ref.gate.e_score_correction_bias.normal_(0, 0.1)
    ours = MoE(config)
    gate, up = ref.experts.gate_up_proj.detach().chunk(2, dim=1)
    ours.load_state_dict({
        "gate.weight": ref.gate.weight, "gate.e_score_correction_bias":
        ref.gate.e_score_correction_bias, "experts.gate_proj": gate, "experts.up_proj": up,
        "experts.down_proj": ref.experts.down_proj,
        **{f"shared_experts.{k}": v for k, v in ref.shared_experts.state_dict().items()}})
    x = torch.randn(2, 30, 64)
    seen: list = []
    ref.gate.register_forward_hook(lambda m, i, out: seen.append(out[2]))
    with torch.no_grad():
        expected = ref(x)
        out, ids = ours(x)
    assert (out - expected).abs().max().item() <= 1e-5
    assert torch.equal(ids.reshape(-1, 4).sort(-1).values.long(), seen[0].sort(-1).values)


def test_fused_cuda_decode_refuses_partial_rotary(glm: Tiny) -> None:
    """GLM's half-rotary heads are decoded eagerly; the reason names partial rotary."""
    from streamrl.producers.engine.cuda.decoder import unsupported_reason

    assert "partial rotary" in unsupported_reason(load_checkpoint(glm.path))
