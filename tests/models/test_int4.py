"""INT4 QAT: the quantizer on a hand-checked group, packing, the straight-through gradient, and
the torch engine serving the INT4 QAT trainer's weights as W4A16 with the trainer's logprobs
(fp32, CPU), from the trainer's fp32 tensors and from an int4 payload 7x smaller."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamrl.consumers.trainer.advantages import grpo
from streamrl.consumers.trainer.batch import build_batch
from streamrl.consumers.trainer.learner import Learner, LearnerSetup
from streamrl.consumers.trainer.losses import decoupled_ppo
from streamrl.hooks.generation import GenerationRequest, SamplingParams
from streamrl.models import load_checkpoint
from streamrl.models.quant import (
    FakeQuantExperts,
    FakeQuantLinear,
    Int4Experts,
    Int4Linear,
    Int4Spec,
    fake_quant_int4,
    fake_quantize,
    int4_payload,
    pack_int4,
    quantize_int4,
    unpack_int4,
)
from streamrl.producers.engine import TorchEngine
from streamrl.recipe.config import TrainerSection
from streamrl.recipe.engine import EngineConfig
from streamrl.recipe.trainer import Int4Config, QatConfig
from tests.models.tiny import Tiny
from tests.trainer.helpers import sample

PROMPTS = [[5, 17, 42, 7, 99], [3, 3, 250, 11]]
ENGINE = EngineConfig(max_batch_size=4, max_seq_len=64)
# fp32 on CPU: engine (dequantize, then torch matmul, paged KV) and trainer (fake-quantized
# weight, full-sequence forward) compute the same weights in different orders. Measured: at
# most 1e-6 apart, while the unquantized weights are 0.06 (experts) to 0.5 (linear) away.
ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls (tests/conftest.py)


def test_quantizer_on_a_hand_checked_group() -> None:
    w = torch.tensor([[0.7, -0.35, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0]])
    q, scales = quantize_int4(w, group_size=4)
    # group 1: s = 0.7 / 7 = 0.1; -3.5 rounds half to even (-4). group 2 is all zero: s = 1.
    assert q.tolist() == [[7, -4, 1, 0, 0, 0, 0, 0]]
    assert scales.tolist() == [[pytest.approx(0.1), 1.0]]
    assert fake_quant_int4(w, 4).tolist()[0][:4] == pytest.approx([0.7, -0.4, 0.1, 0.0])
    with pytest.raises(ValueError, match="group_size 3 must divide the input dim 8"):
        quantize_int4(w, group_size=3)


def test_packing_round_trips_every_int4_value_two_per_byte() -> None:
    q = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 1)  # [3, 16]
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 8)
    assert packed[0, 0].item() == (0x8 | (0x9 << 4))  # -8 -> 0b1000 low, -7 -> 0b1001 high
    assert torch.equal(unpack_int4(packed), q)


def test_straight_through_gradient_is_the_identity_on_the_weights() -> None:
    torch.manual_seed(0)
    w = torch.randn(4, 32, requires_grad=True)
    c = torch.randn(4, 32)
    (fake_quant_int4(w, 16) * c).sum().backward()
    assert torch.equal(w.grad, c)
    assert not torch.equal(fake_quant_int4(w, 16), w)  # yet the value is quantized


def test_fake_quantize_keeps_names_and_targets_what_it_says(dense: Tiny, moe: Tiny) -> None:
    model = load_checkpoint(dense.path)
    names = set(model.state_dict())
    params = {id(p) for p in model.parameters()}
    quantized = fake_quantize(model, Int4Spec(group_size=32, targets="linear"))
    assert set(model.state_dict()) == names and {id(p) for p in model.parameters()} == params
    assert len(quantized) == 3 * 7  # q, k, v, o, gate, up, down per layer; no router, no head
    assert all(isinstance(model.get_submodule(n), FakeQuantLinear) for n in quantized)
    assert type(model.lm_head) is torch.nn.Linear
    with pytest.raises(ValueError, match="matches no module"):
        fake_quantize(load_checkpoint(dense.path), Int4Spec(group_size=32, targets="experts"))
    with pytest.raises(ValueError, match="does not divide the input dim 96"):
        fake_quantize(load_checkpoint(dense.path), Int4Spec(group_size=64, targets="linear"))
    experts = fake_quantize(load_checkpoint(moe.path), Int4Spec(group_size=32))
    assert len(experts) == 2  # layer 1 is dense (mlp_only_layers)
    assert all(".mlp.experts" in n for n in experts)


@pytest.mark.parametrize(("fixture", "targets"), [("dense", "linear"), ("moe", "experts")])
def test_engine_serves_the_qat_trainers_weights_with_its_logprobs(
        fixture: str, targets: str, request: pytest.FixtureRequest) -> None:
    tiny: Tiny = request.getfixturevalue(fixture)
    int4 = Int4Config(group_size=32, targets=targets)  # type: ignore[arg-type]
    trainer = TrainerSection(batch_size=2, lr=3e-2, qat=QatConfig(int4=int4))
    learner = Learner(load_checkpoint(tiny.path), LearnerSetup(
        trainer=trainer, temperature=1.0, advantage=grpo, loss=decoupled_ppo))
    learner.step([sample([5, 17, 42], [7, 99, 3], reward=float(i), versions=[0] * 3,
                         group_id="g", sample_id=f"s{i}", logprobs=[-5.0] * 3)
                  for i in range(2)], [1.0, 1.0], version=1)
    version = learner.hf_state_dict()  # the fp32 masters, as the trainer publishes them

    engine = TorchEngine(load_checkpoint(tiny.path), ENGINE)
    engine.use_int4(int4.spec())
    engine.load_weights(version, 1)
    kind = Int4Experts if targets == "experts" else Int4Linear
    assert any(isinstance(m, kind) for m in engine.model.modules())
    params = SamplingParams(temperature=1.0, max_new_tokens=8, seed=3)
    results = engine.generate([GenerationRequest(request_id=f"r{i}", prompt_tokens=p,
                                                 params=params) for i, p in enumerate(PROMPTS)])
    rows = [sample(p, r.response_tokens.tolist(), versions=[1] * len(r.response_tokens),
                   group_id="e", sample_id=r.request_id, logprobs=r.logprobs.tolist())
            for p, r in zip(PROMPTS, results, strict=True)]
    batch = build_batch(rows, trainer.algorithm.batch)
    with torch.no_grad():
        ours = learner.logprobs(batch)[batch.loss_mask]
    served = batch.old_logprobs[batch.loss_mask]
    np.testing.assert_allclose(served.numpy(), ours.numpy(), rtol=0, atol=ATOL)

    # Quantization acts: the unquantized weights give other logprobs.
    plain = Learner(load_checkpoint(tiny.path), LearnerSetup(
        trainer=TrainerSection(batch_size=2), temperature=1.0, advantage=grpo,
        loss=decoupled_ppo))
    plain.model.load_state_dict(learner.model.state_dict())
    with torch.no_grad():
        unquantized = plain.logprobs(batch)[batch.loss_mask]
    assert float((unquantized - served).abs().max()) > 10 * ATOL

    # The same version as an int4 payload: the same weights, a fraction of the bytes.
    payload = int4_payload(version, int4.spec())
    again = TorchEngine(load_checkpoint(tiny.path), ENGINE)
    again.use_int4(int4.spec())
    again.load_weights(payload, 1)
    twice = again.generate([GenerationRequest(request_id=f"r{i}", prompt_tokens=p,
                                              params=params) for i, p in enumerate(PROMPTS)])
    for a, b in zip(results, twice, strict=True):
        np.testing.assert_array_equal(a.response_tokens, b.response_tokens)
        np.testing.assert_array_equal(a.logprobs, b.logprobs)
    targeted = [n for n in version if n + ".qweight" in payload]
    fp32 = sum(version[n].numel() * 4 for n in targeted)
    int4_bytes = sum(payload[n + s].numel() * payload[n + s].element_size()
                     for n in targeted for s in (".qweight", ".scales"))
    assert int4_bytes == pytest.approx(fp32 / 8 * (1 + 8 / 32))  # 4 bits + fp32 per 32
    with pytest.raises(ValueError, match="is missing"):
        again.load_weights({k: v for k, v in payload.items() if k != targeted[0] + ".scales"}, 2)


def test_version_zero_is_quantized_from_the_fp32_weights_not_the_engines_cast(
        dense: Tiny) -> None:
    from streamrl.models.checkpoint import read_safetensors

    spec = Int4Spec(group_size=32, targets="linear")
    fp32 = read_safetensors(dense.path)
    bf16 = EngineConfig(max_batch_size=2, max_seq_len=32, dtype="bfloat16")
    exact, cast = TorchEngine(load_checkpoint(dense.path), bf16), TorchEngine(
        load_checkpoint(dense.path), bf16)
    exact.use_int4(spec, fp32)
    cast.use_int4(spec)
    name = "model.layers.0.mlp.down_proj"
    q, scales = quantize_int4(fp32[name + ".weight"], 32)
    served = exact.model.get_submodule(name)
    assert torch.equal(served.qweight, pack_int4(q)) and torch.equal(served.scales, scales)
    assert not torch.equal(cast.model.get_submodule(name).scales, scales)  # bf16-rounded amax


def test_fake_quantized_experts_train_their_fp32_masters(moe: Tiny) -> None:
    model = load_checkpoint(moe.path)
    fake_quantize(model, Int4Spec(group_size=32))
    experts = next(m for m in model.modules() if isinstance(m, FakeQuantExperts))
    tokens = torch.tensor([[5, 17, 42, 7, 99, 3]])
    out = model(tokens, torch.arange(6)[None])
    out.logits.sum().backward()
    assert experts.gate_proj.grad is not None and bool(experts.gate_proj.grad.abs().sum() > 0)


def test_a_version_published_as_int4_carries_the_trainers_digest_and_loads(
        dense: Tiny, tmp_path) -> None:
    """`[trainer.qat.int4] publish = "int4"`: the transport moves the packed payload, the
    announcement keeps the trainer's digest (replay and audit compare it) beside the payload's,
    and an engine loading it serves exactly what one quantizing the fp32 version serves."""
    import functools

    from streamrl.models.checkpoint import read_safetensors
    from streamrl.models.quant import int4_scheme
    from streamrl.weights import TransportConfig, fp8
    from streamrl.weights.digest import weights_digest

    spec = Int4Spec(group_size=32, targets="linear")
    version = read_safetensors(dense.path)
    transport = TransportConfig(kind="file", keep_last=1, directory=str(tmp_path)).open()
    try:
        published = transport.finish_publish(
            fp8.begin_publish(transport, 1, version, scheme=int4_scheme(spec),
                              quantize=functools.partial(int4_payload, spec=spec)))
        assert published.digest == weights_digest(version)
        assert published.quantization == "int4/sym-group32/linear"
        packed = set(int4_payload(version, spec))
        targeted = sum(t.numel() for n, t in version.items() if n + ".qweight" in packed)
        rest = sum(t.numel() * 4 for n, t in version.items() if n + ".qweight" not in packed)
        assert published.num_bytes == rest + targeted * (0.5 + 4 / 32)  # 4 bits + fp32 / 32
        payload = transport.load(published.locator, expected_digest=published.quantized_digest)
    finally:
        transport.close()
    served = []
    for tensors in (payload, version):
        engine = TorchEngine(load_checkpoint(dense.path), ENGINE)
        engine.use_int4(spec)
        engine.load_weights(tensors, 1)
        served.append(engine.generate([GenerationRequest(
            request_id="r", prompt_tokens=PROMPTS[0],
            params=SamplingParams(temperature=1.0, max_new_tokens=6, seed=2))])[0])
    np.testing.assert_array_equal(served[0].logprobs, served[1].logprobs)
