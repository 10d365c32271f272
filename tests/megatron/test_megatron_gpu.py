"""The megatron-core backend on a GPU: GPTModel's parameters are exactly what the conversion
produces, its logprobs match the torch backend's on the same weights, and its learner takes the
same GRPO step. Skips without CUDA or without megatron-core (pip install 'streamrl[megatron]')."""

from __future__ import annotations

import pytest
import torch

from streamrl.consumers.trainer import decoupled_ppo, grpo
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.consumers.trainer.megatron import hf_to_megatron, megatron_shapes
from streamrl.consumers.trainer.megatron import model as mg
from streamrl.models import CausalLM, ModelConfig, token_logprobs
from streamrl.models.checkpoint import to_hf_names
from streamrl.recipe.config import TrainerSection
from streamrl.recipe.trainer import AlgorithmConfig, ComputeConfig
from tests.trainer.helpers import sample

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
if torch.cuda.is_available():
    pytest.importorskip("megatron.core")

CONFIG = ModelConfig(model_type="qwen3", vocab_size=4096, hidden_size=256, intermediate_size=512,
                     num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2,
                     head_dim=64, tie_word_embeddings=True, rope_theta=1_000_000.0)


@pytest.fixture(scope="module")
def torch_model() -> CausalLM:
    torch.manual_seed(0)
    model = CausalLM(CONFIG)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)  # norms away from 1, so a norm mapped wrong shows
    return model.cuda().eval()


def _logprobs(model: CausalLM, tokens, targets, bf16: bool) -> torch.Tensor:
    positions = torch.arange(tokens.shape[1], device="cuda").expand_as(tokens)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        hidden = model(tokens, positions, return_hidden=True).hidden
        return token_logprobs(hidden, model.lm_head.weight, targets)[0]


def test_gpt_model_parameters_are_the_converted_names_and_shapes(torch_model) -> None:
    mg.initialize()
    gpt = mg.build_gpt(CONFIG)
    got = {n: tuple(p.shape) for n, p in gpt.named_parameters()}
    assert got == megatron_shapes(CONFIG)
    hf = to_hf_names(torch_model.state_dict(), CONFIG)
    mg.load_hf(gpt, hf, CONFIG)
    back = mg.to_hf(gpt, CONFIG)
    assert all(torch.equal(back[n], hf[n]) for n in hf)  # round trip through the live model
    assert set(hf_to_megatron(hf, CONFIG)) == set(got)


def test_megatron_logprobs_match_the_torch_backend(torch_model, record_property) -> None:
    """fp32: the two implementations agree to float rounding. bf16: megatron is no further from
    the torch backend than twice the torch backend's own bf16-vs-fp32 gap (plus 0.02 nats)."""
    mg.initialize()
    gpt = mg.build_gpt(CONFIG)
    mg.load_hf(gpt, to_hf_names(torch_model.state_dict(), CONFIG), CONFIG)
    gpt.eval()
    g = torch.Generator(device="cuda").manual_seed(3)
    seq = torch.randint(0, CONFIG.vocab_size, (4, 129), device="cuda", generator=g)
    tokens, targets = seq[:, :-1], seq[:, 1:]
    ref32 = _logprobs(torch_model, tokens, targets, bf16=False)
    ref16 = _logprobs(torch_model, tokens, targets, bf16=True)
    with torch.no_grad():
        got32 = mg.logprobs(gpt, tokens, targets)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got16 = mg.logprobs(gpt, tokens, targets)
    fp32_gap = float((got32 - ref32).abs().max())
    bf16_gap = float((got16 - ref16).abs().max())
    noise = float((ref16 - ref32).abs().max())
    record_property("fp32_max_gap", fp32_gap)
    record_property("bf16_max_gap", bf16_gap)
    record_property("torch_bf16_noise", noise)
    print(f"megatron vs torch logprobs: fp32 max gap {fp32_gap:.3g}, bf16 max gap "
          f"{bf16_gap:.3g} (torch bf16-vs-fp32 {noise:.3g}), "
          f"mean logprob {float(ref32.mean()):.3g}")
    assert fp32_gap < 1e-3
    assert bf16_gap <= 2 * noise + 0.02


def test_megatron_learner_takes_the_same_grpo_step(torch_model) -> None:
    rows = [sample([1, 2, 3], [4 + i, 5 + i, 6 + i, 7], reward=float(i == 0), group_id="g",
                   sample_id=str(i), logprobs=[-8.0] * 4) for i in range(4)]
    config = LearnerSetup(
        trainer=TrainerSection(lr=1e-3, weight_decay=0.0, grad_clip=1.0, minibatches=2,
                               algorithm=AlgorithmConfig(),
                               compute=ComputeConfig(device="cuda", precision="bf16")),
        temperature=1.0, advantage=grpo, loss=decoupled_ppo)
    hf = {k: v.cpu() for k, v in to_hf_names(torch_model.state_dict(), CONFIG).items()}
    ours = mg.MegatronLearner(CONFIG, hf, config)
    ref = Learner(CausalLM(CONFIG), config)
    from streamrl.producers.engine.weights import copy_hf_weights
    copy_hf_weights(ref.model, hf)
    for version in range(2):
        m_ours = ours.step(rows, [1.0] * 4, version)
        m_ref = ref.step(rows, [1.0] * 4, version)
        assert abs(m_ours["loss"] - m_ref["loss"]) < 0.05 * max(1.0, abs(m_ref["loss"]))
    a, b = ours.hf_state_dict(), ref.hf_state_dict()
    moved = [float((a[n] - hf[n].cuda()).norm()) for n in hf]
    assert max(moved) > 0  # the step changed the weights
    for n in hf:
        assert (a[n] - b[n]).norm() <= 0.05 * b[n].norm() + 1e-6, n
