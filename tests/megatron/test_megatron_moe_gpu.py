"""The megatron-core backend's Qwen3-MoE on a GPU: GPTModel's parameters are the conversion's,
its logprobs match the torch backend's on the same weights (free routing and replayed), routing
replay through megatron's RouterReplay sends every recorded token to exactly its recorded experts
while the router still gets gradients equal to the torch backend's, the learner takes the same
GRPO step, and a saved learner resumes. Skips without CUDA or megatron-core."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
import torch

from streamrl.consumers.trainer import decoupled_ppo, grpo
from streamrl.consumers.trainer.batch import build_batch
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.consumers.trainer.megatron import megatron_shapes, megatron_to_hf
from streamrl.consumers.trainer.megatron import model as mg
from streamrl.consumers.trainer.megatron.replay import batch_major, routing_maps
from streamrl.models import CausalLM, ModelConfig, token_logprobs
from streamrl.models.checkpoint import to_hf_names
from streamrl.models.moe import MoE
from streamrl.producers.engine.weights import copy_hf_weights
from streamrl.recipe.config import TrainerSection
from streamrl.recipe.trainer import AlgorithmConfig, ComputeConfig
from tests.trainer.helpers import sample

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
if torch.cuda.is_available():
    pytest.importorskip("megatron.core")

# Qwen3-MoE (renormalized top-k, a dense layer in the middle, untied head) and the Qwen2-MoE
# variant (gated shared expert, unnormalized top-k, tied embeddings).
MOE = ModelConfig(model_type="qwen3_moe", vocab_size=4096, hidden_size=256,
                  intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=64, num_experts=16, num_experts_per_tok=4,
                  moe_intermediate_size=128, norm_topk_prob=True, mlp_only_layers=(1,),
                  rope_theta=1_000_000.0)
SHARED = msgspec.structs.replace(MOE, norm_topk_prob=False, mlp_only_layers=(),
                                 shared_expert_intermediate_size=256, tie_word_embeddings=True)
CONFIGS = {"qwen3_moe": MOE, "shared_expert": SHARED}
B, S = 4, 128


def torch_model(config: ModelConfig) -> CausalLM:
    torch.manual_seed(0)
    model = CausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)  # norms away from 1, so a norm mapped wrong shows
        for m in model.modules():
            if isinstance(m, MoE):  # experts that matter: a wrong expert moves the logprobs
                for w in (m.experts.gate_proj, m.experts.up_proj, m.experts.down_proj):
                    w.mul_(3.0)
    return model.cuda()


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request) -> tuple[ModelConfig, CausalLM, object]:
    config = CONFIGS[request.param]
    ref = torch_model(config)
    mg.initialize()
    gpt = mg.build_gpt(config)
    mg.load_hf(gpt, to_hf_names(ref.state_dict(), config), config)
    return config, ref, gpt


def data(config: ModelConfig, batch: int = B, seq: int = S, device: str = "cuda"
         ) -> tuple[torch.Tensor, ...]:
    """Tokens, targets, a recorded routing that is NOT the router's own choice (random distinct
    experts), and where it was recorded: laid out as the trainer's batches are, an unrecorded
    prompt, a recorded response, an unrecorded tail (the last token and padding, which no loss
    reads). Also `scored`: the positions before the tail."""
    g = torch.Generator(device=device).manual_seed(3)
    ids = torch.randint(0, config.vocab_size, (batch, seq + 1), device=device, generator=g)
    L, E, k = config.num_moe_layers, config.num_experts, config.num_experts_per_tok
    forced = torch.rand(batch, seq, L, E, device=device, generator=g).argsort(-1)[..., :k].int()
    at = torch.arange(seq, device=device)
    prompt = torch.randint(seq // 8, seq // 2, (batch, 1), device=device, generator=g)
    end = torch.randint(3 * seq // 4, seq + 1, (batch, 1), device=device, generator=g)
    mask, scored = (at >= prompt) & (at < end), at < end
    return ids[:, :-1], ids[:, 1:], forced, mask, scored


def ref_logprobs(model: CausalLM, tokens, targets, *, bf16: bool, forced=None, mask=None):
    positions = torch.arange(tokens.shape[1], device="cuda").expand_as(tokens)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        out = model(tokens, positions, forced_routing=forced, routing_mask=mask,
                    return_hidden=True)
        return token_logprobs(out.hidden, model.lm_head.weight, targets)[0], out.routed_experts


def mg_logprobs(gpt, tokens, targets, *, bf16: bool, forced=None, mask=None):
    """Megatron's logprobs and the experts each token was sent to in the scoring pass."""
    with routing_maps(gpt) as maps, torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        logp = mg.logprobs(gpt, tokens, targets, forced_routing=forced, routing_mask=mask)
    assert len(maps) == (1 if forced is None else 2)  # a RECORD pass first when replaying
    return logp, batch_major(maps[-1], tokens.shape[0])


def as_ids(routing_map: torch.Tensor, k: int) -> torch.Tensor:
    """[..., E] bool with k set -> [..., k] sorted expert ids."""
    assert bool((routing_map.sum(-1) == k).all())
    return routing_map.float().topk(k, dim=-1).indices.sort(-1).values


def test_moe_gpt_parameters_are_the_converted_names_and_shapes(pair) -> None:
    config, ref, gpt = pair
    assert {n: tuple(p.shape) for n, p in gpt.named_parameters()} == megatron_shapes(config)
    hf = to_hf_names(ref.state_dict(), config)
    back = mg.to_hf(gpt, config)
    assert sorted(back) == sorted(hf)
    assert all(torch.equal(back[n], hf[n]) for n in hf)  # round trip through the live model


def test_free_routing_matches_the_torch_backend(pair, record_property) -> None:
    """fp32: megatron routes (nearly) every token to the torch backend's experts and the
    logprobs agree to float rounding on every sequence without a near-tie flip."""
    config, ref, gpt = pair
    tokens, targets, *_ = data(config)
    k = config.num_experts_per_tok
    with torch.no_grad():
        want, want_ids = ref_logprobs(ref, tokens, targets, bf16=False)
        got, got_map = mg_logprobs(gpt, tokens, targets, bf16=False)
    same = (as_ids(got_map, k) == want_ids.sort(-1).values).all(-1)  # [B, S, L]
    clean = same.flatten(1).all(-1)  # rows without any flipped decision
    gap = (got - want).abs()
    record_property("fp32_decisions_agree", float(same.float().mean()))
    record_property("fp32_max_gap", float(gap.max()))
    print(f"{config.model_type} free fp32: decisions agree {float(same.float().mean()):.5f}, "
          f"max gap {float(gap.max()):.3g} (clean rows {int(clean.sum())}/{B})")
    assert float(same.float().mean()) >= 0.999
    assert bool(clean.any()) and float(gap[clean].max()) < 1e-3


def test_replay_uses_the_recorded_experts_and_matches_the_torch_backend(pair,
                                                                        record_property) -> None:
    """The recorded experts are deliberately not the router's own. At recorded positions
    megatron sends each token to exactly them, in the prompt to its own choice (the torch
    backend's). At every scored position fp32 logprobs agree to float rounding; bf16 ones are
    no further from the torch backend's than twice its own bf16-vs-fp32 gap plus 0.02 nats.
    (In the unscored tail megatron keeps its RECORD pass's choice, see replay.py.)"""
    config, ref, gpt = pair
    tokens, targets, forced, mask, scored = data(config)
    prompt = scored & ~mask
    k = config.num_experts_per_tok
    with torch.no_grad():
        ref32, ref_ids = ref_logprobs(ref, tokens, targets, bf16=False, forced=forced, mask=mask)
        got32, map32 = mg_logprobs(gpt, tokens, targets, bf16=False, forced=forced, mask=mask)
        ref16, _ = ref_logprobs(ref, tokens, targets, bf16=True, forced=forced, mask=mask)
        got16, map16 = mg_logprobs(gpt, tokens, targets, bf16=True, forced=forced, mask=mask)
    want = forced.long().sort(-1).values
    for routing in (map32, map16):
        assert torch.equal(as_ids(routing, k)[mask], want[mask])  # every recorded token
    own = (as_ids(map32, k)[prompt] == ref_ids[prompt].long().sort(-1).values).all(-1)
    assert float(own.float().mean()) >= 0.999
    fp32_gap = float((got32 - ref32).abs()[scored].max())
    bf16_gap = float((got16 - ref16).abs()[scored].max())
    noise = float((ref16 - ref32).abs()[scored].max())
    for name, value in (("fp32_max_gap", fp32_gap), ("bf16_max_gap", bf16_gap),
                        ("torch_bf16_noise", noise)):
        record_property(name, value)
    print(f"{config.model_type} replay: fp32 max gap {fp32_gap:.3g}, bf16 max gap {bf16_gap:.3g}"
          f" (torch bf16-vs-fp32 {noise:.3g}), own choice at unrecorded "
          f"{float(own.float().mean()):.5f} of prompt decisions")
    assert fp32_gap < 1e-3
    assert bf16_gap <= 2 * noise + 0.02


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
            for n, p in model.named_parameters()}


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_replayed_router_gradients_match_the_torch_backend(pair, bf16: bool,
                                                           record_property) -> None:
    """d(sum_t w_t log p_t)/d(weights) over the scored positions under replay: every router
    gets a nonzero gradient, and every parameter's gradient equals the torch backend's (fp32:
    0.2% relative; bf16: cosine similarity >= 0.99 for the routers, 0.98 elsewhere)."""
    config, ref, gpt = pair
    tokens, targets, forced, mask, scored = data(config)
    if bf16:  # record everywhere: no bf16 near-tie flips at free positions in the comparison
        mask = torch.ones_like(mask)
    w = torch.randn(B, S, device="cuda", generator=torch.Generator("cuda").manual_seed(5))
    w = w * scored  # the loss reads no tail position
    ref.zero_grad(set_to_none=True)
    gpt.zero_grad(set_to_none=True)
    (ref_logprobs(ref, tokens, targets, bf16=bf16, forced=forced, mask=mask)[0] * w).sum(
        ).backward()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        logp = mg.logprobs(gpt, tokens, targets, forced_routing=forced, routing_mask=mask)
    (logp * w).sum().backward()
    want = to_hf_names(_grads(ref), config)
    got = megatron_to_hf(_grads(gpt), config)
    routers = [f"model.layers.{i}.mlp.gate.weight" for i in config.moe_layers]
    worst_rel, worst_cos = 0.0, 1.0
    for name, g in want.items():
        rel = float((got[name] - g).norm() / g.norm().clamp_min(1e-12))
        cos = float(torch.nn.functional.cosine_similarity(got[name].flatten(), g.flatten(),
                                                          dim=0))
        worst_rel, worst_cos = max(worst_rel, rel), min(worst_cos, cos)
        if name in routers:
            assert float(got[name].norm()) > 0, name
            record_property(f"router{name.split('.')[2]}_rel_err", rel)
        if not bf16:
            assert rel < 2e-3, (name, rel)
        else:
            assert cos >= (0.99 if name in routers else 0.98), (name, cos)
    record_property("worst_rel_err", worst_rel)
    record_property("worst_cosine", worst_cos)
    print(f"{config.model_type} grads ({'bf16' if bf16 else 'fp32'}): worst relative error "
          f"{worst_rel:.3g}, worst cosine {worst_cos:.5f}")


def _rows(config: ModelConfig, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    L, E, k = config.num_moe_layers, config.num_experts, config.num_experts_per_tok
    rows = []
    for i in range(4):
        R = 6 + i
        routed = np.stack([np.stack([rng.permutation(E)[:k] for _ in range(L)])
                           for _ in range(R)]).astype(np.uint8)  # [R, L, k], not the router's
        rows.append(sample(list(rng.integers(0, 4096, 5 + i)), list(rng.integers(0, 4096, R)),
                           reward=float(i % 2), group_id="g", sample_id=str(i),
                           logprobs=[-8.0] * R, routed=routed))
    return rows


def _learner_config() -> LearnerSetup:
    return LearnerSetup(
        trainer=TrainerSection(lr=1e-3, weight_decay=0.0, grad_clip=1.0, minibatches=2,
                               algorithm=AlgorithmConfig(),
                               compute=ComputeConfig(device="cuda", precision="bf16")),
        temperature=1.0, advantage=grpo, loss=decoupled_ppo)


def test_megatron_moe_learner_replays_and_takes_the_same_grpo_step() -> None:
    config, rows = MOE, _rows(MOE)
    hf = {k: v.cpu() for k, v in to_hf_names(torch_model(config).state_dict(), config).items()}
    ours = mg.MegatronLearner(config, hf, _learner_config())
    ref = Learner(CausalLM(config), _learner_config())
    copy_hf_weights(ref.model, hf)
    batch = build_batch(rows)
    assert batch.forced_routing is not None and batch.routing_mask is not None
    for version in range(2):
        with routing_maps(ours.model) as maps:
            m_ours = ours.step(rows, [1.0] * 4, version)
        m_ref = ref.step(rows, [1.0] * 4, version)
        assert abs(m_ours["loss"] - m_ref["loss"]) < 0.05 * max(1.0, abs(m_ref["loss"]))
        # proximal + 2 minibatches, each a RECORD pass then the replayed pass
        assert len(maps) == 6
        for forward, rows_mb in zip(maps[1::2], (slice(0, 4), slice(0, 2), slice(2, 4)),
                                    strict=True):
            got = as_ids(batch_major(forward, rows_mb.stop - rows_mb.start),
                         config.num_experts_per_tok)
            mask = batch.routing_mask[rows_mb].cuda()
            want = batch.forced_routing[rows_mb].cuda().long().sort(-1).values
            assert torch.equal(got[mask], want[mask])
    a, b = ours.hf_state_dict(), ref.hf_state_dict()
    assert max(float((a[n] - hf[n].cuda()).norm()) for n in hf) > 0
    for n in hf:
        assert (a[n] - b[n]).norm() <= 0.05 * b[n].norm() + 1e-6, n


def test_saved_megatron_learner_resumes_where_it_left_off(tmp_path, record_property) -> None:
    """save -> from_checkpoint gives exactly the same weights and AdamW state, so the next step
    is the one the uninterrupted learner takes: no further from it than two resumed copies are
    from each other (megatron sums expert outputs with scatter_add, whose order is not fixed on
    CUDA; deterministic algorithms switch it to index_add, so that floor should be 0)."""
    config, rows = MOE, _rows(MOE, seed=1)
    hf = to_hf_names(torch_model(config).state_dict(), config)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        first = mg.MegatronLearner(config, hf, _learner_config())
        first.step(rows, [1.0] * 4, 0)
        first.save(tmp_path / "ckpt")
        resumed = mg.MegatronLearner.from_checkpoint(tmp_path / "ckpt", _learner_config())
        twin = mg.MegatronLearner.from_checkpoint(tmp_path / "ckpt", _learner_config())
        a, b = first.hf_state_dict(), resumed.hf_state_dict()
        assert sorted(a) == sorted(b) and all(torch.equal(a[n], b[n]) for n in a)
        sa, sb = first.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
        assert sorted(sa) == sorted(sb)
        assert all(torch.equal(sa[i][key], sb[i][key]) for i in sa for key in sa[i])
        losses = [learner.step(rows, [1.0] * 4, 1)["loss"] for learner in (first, resumed, twin)]
    finally:
        torch.use_deterministic_algorithms(deterministic)
    a, b, c = first.hf_state_dict(), resumed.hf_state_dict(), twin.hf_state_dict()
    diff = max(float((a[n] - b[n]).abs().max()) for n in a)
    floor = max(float((b[n] - c[n]).abs().max()) for n in a)
    record_property("resumed_step_max_weight_diff", diff)
    record_property("twin_step_max_weight_diff", floor)
    print(f"resumed step: losses {losses}, max weight diff {diff:.3g} (two resumed copies: "
          f"{floor:.3g})")
    assert abs(losses[0] - losses[1]) <= 2 * abs(losses[1] - losses[2]) + 1e-6
    assert diff <= 2 * floor + 1e-6
