"""An engine's weights packed like a cuda_ipc slot: a version whose slot is in the engine's dtype
loads as one copy, the model computes exactly what it did, a tied head stays tied, the fused
decoder views q|k|v and gate|up in place; anything else still loads through the multi-tensor
copy. All on CPU tensors: the layout is plain arithmetic on offsets."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # the decoder module builds Triton kernels at import
    os.environ["TRITON_INTERPRET"] = "1"

from streamrl.models import CausalLM, ModelConfig
from streamrl.models.checkpoint import to_hf_names
from streamrl.producers.engine.cuda.decoder import fuse_linears
from streamrl.producers.engine.packing import pack_weights, packed_buffer
from streamrl.producers.engine.weights import copy_hf_weights
from streamrl.weights.cuda_buffers import ALIGN, layout, slot_order, unpack

# Every matrix and norm a multiple of ALIGN bytes in bf16 (as Qwen3-0.6B's are).
ALIGNED = ModelConfig(model_type="qwen3", vocab_size=256, hidden_size=128, intermediate_size=256,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=32, tie_word_embeddings=True)
# Norms of 24 bytes in bf16: tensors padded apart, groups still one range (matrices aligned).
ODD = ModelConfig(model_type="qwen3", vocab_size=64, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=12, tie_word_embeddings=False)


def model(config: ModelConfig, dtype: torch.dtype, seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    m = CausalLM(config).to(dtype).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.5)  # norms too: every byte of every tensor matters
    return m


def slot(trainer: CausalLM, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """What a cuda_ipc reader hands the engine: views of one buffer at the publisher's offsets."""
    state = to_hf_names(trainer.state_dict(), trainer.config)
    entries, sources = layout(state, dtype)
    buffer = torch.zeros(max(o + n for _, o, n, _ in sources), dtype=torch.uint8)
    views = unpack(buffer, entries)
    for name, t in state.items():
        views[name].copy_(t)
    return views


def forward(m: CausalLM) -> torch.Tensor:
    tokens = torch.arange(12).remainder(m.config.vocab_size)[None]
    with torch.no_grad():
        return m(tokens, torch.arange(12)[None]).logits


def test_the_slot_order_keeps_each_fused_group_adjacent_and_in_fuse_order() -> None:
    names = [f"model.layers.{i}.{m}.{p}.{leaf}" for i in (0, 1, 10)
             for m, ps in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm",
                                           "k_norm")),
                           ("mlp", ("gate_proj", "up_proj", "down_proj")))
             for p in ps for leaf in ("weight", "bias")]
    order = sorted(names, key=slot_order)
    for prefix in ("model.layers.1.self_attn.", "model.layers.10.mlp."):
        for leaf in ("weight", "bias"):
            group = ["q_proj", "k_proj", "v_proj"] if "attn" in prefix else \
                ["gate_proj", "up_proj"]
            at = order.index(f"{prefix}{group[0]}.{leaf}")
            assert order[at : at + len(group)] == [f"{prefix}{p}.{leaf}" for p in group]
    # Whatever order the names come in: the same layout (publisher and engine agree).
    state = to_hf_names(model(ALIGNED, torch.bfloat16).state_dict(), ALIGNED)
    shuffled = dict(reversed(list(state.items())))
    assert layout(state, None)[0] == layout(shuffled, None)[0]
    offsets = {name: (offset, shape) for name, _, shape, offset in layout(state, None)[0]}
    q, k, v = (offsets[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv")
    assert q[0] + 2 * q[1][0] * q[1][1] == k[0] and k[0] + 2 * k[1][0] * k[1][1] == v[0]
    assert all(o % ALIGN == 0 for o, _ in offsets.values())


def test_engine_and_trainer_name_the_same_tensors() -> None:
    for config in (ALIGNED, ODD):  # tied head (published once, as the embedding) and untied
        m = model(config, torch.float32)
        assert list(to_hf_names(m.state_dict(), config)) == [n for n, _ in m.named_parameters()]


@pytest.mark.parametrize("config", [ALIGNED, ODD], ids=["tied", "untied-odd-sizes"])
def test_packing_changes_no_output_and_keeps_a_tied_head_tied(config: ModelConfig) -> None:
    m = model(config, torch.bfloat16)
    before, params = forward(m), list(m.parameters())
    flat = pack_weights(m)
    assert flat is not None and packed_buffer(m) is flat
    assert list(m.parameters()) == params  # the same Parameter objects, moved bytes
    assert torch.equal(forward(m), before)
    base = flat.untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == base for p in m.parameters())
    if config.tie_word_embeddings:
        assert m.lm_head.weight is m.model.embed_tokens.weight
        assert flat.numel() < sum(p.numel() * 2 for p in m.state_dict().values())  # once


@pytest.mark.parametrize("config", [ALIGNED, ODD], ids=["tied", "untied-odd-sizes"])
def test_a_slot_in_the_engines_dtype_loads_as_one_copy(config: ModelConfig) -> None:
    engine, trainer = model(config, torch.bfloat16, seed=0), model(config, torch.float32, seed=1)
    pack_weights(engine)
    views = slot(trainer, torch.bfloat16)
    assert not torch.equal(forward(engine), forward(model(config, torch.bfloat16, seed=1)))
    for step in range(3):
        with torch.inference_mode():  # as the engine loads; the plan is reused after step 0
            assert copy_hf_weights(engine, dict(views)) == "one copy"
        for name, p in engine.named_parameters():
            assert torch.equal(p, views[name]), (step, name)
        with torch.no_grad():
            for t in views.values():
                t.mul_(-1.5)  # the next version lands in the same slot
    expected = {n: p.clone() for n, p in engine.named_parameters()}
    with torch.no_grad():  # padding bytes of the slot are copied too, and harmless
        torch.empty(0, dtype=torch.uint8).set_(views["model.norm.weight"].untyped_storage()).fill_(
            0x7F)
        for name, t in views.items():
            t.copy_(expected[name])
    assert copy_hf_weights(engine, dict(views)) == "one copy"  # outside inference mode too
    for name, p in engine.named_parameters():
        assert torch.equal(p, expected[name]), name
    if config.tie_word_embeddings:
        assert torch.equal(engine.lm_head.weight, views["model.embed_tokens.weight"])


def test_anything_else_loads_through_the_multi_tensor_copy() -> None:
    trainer = model(ALIGNED, torch.float32, seed=1)
    unpacked = model(ALIGNED, torch.bfloat16)  # not packed: no single copy can be trusted
    assert copy_hf_weights(unpacked, slot(trainer, torch.bfloat16)) == "multi-tensor"
    engine = model(ALIGNED, torch.bfloat16)
    pack_weights(engine)
    fp32_slot = slot(trainer, None)  # the engine casts: bytes differ
    assert copy_hf_weights(engine, fp32_slot) == "multi-tensor"
    for name, p in engine.named_parameters():
        assert torch.equal(p, fp32_slot[name].to(torch.bfloat16)), name
    separate = {k: v.to(torch.bfloat16) for k, v in to_hf_names(trainer.state_dict(),
                                                                 ALIGNED).items()}
    assert copy_hf_weights(engine, separate) == "multi-tensor"  # not one storage
    views = slot(trainer, torch.bfloat16)
    assert copy_hf_weights(engine, views) == "one copy"
    pack_weights(engine)  # the parameters moved since the plan was made: a new plan
    with torch.no_grad():
        views["model.norm.weight"].add_(1.0)
    assert copy_hf_weights(engine, views) == "one copy"
    assert torch.equal(engine.model.norm.weight, views["model.norm.weight"])
    with pytest.raises(ValueError, match="missing"):  # names still checked on the fast path
        copy_hf_weights(engine, {k: v for k, v in views.items() if "norm" not in k})


def test_fuse_linears_views_packed_weights_in_place_and_concatenates_otherwise() -> None:
    engine = model(ALIGNED, torch.bfloat16)
    pack_weights(engine)
    attn = engine.model.layers[1].self_attn
    qkv = fuse_linears(attn.q_proj, attn.k_proj, attn.v_proj)
    assert qkv.data_ptr() == attn.q_proj.weight.data_ptr()  # a view: nothing copied
    assert torch.equal(qkv, torch.cat([attn.q_proj.weight, attn.k_proj.weight,
                                       attn.v_proj.weight]))
    mlp = engine.model.layers[0].mlp
    gate_up = fuse_linears(mlp.gate_proj, mlp.up_proj)
    views = slot(model(ALIGNED, torch.float32, seed=3), torch.bfloat16)
    assert copy_hf_weights(engine, views) == "one copy"  # a load reaches the fused matrices
    assert torch.equal(qkv[-attn.v_proj.weight.shape[0]:],
                       views["model.layers.1.self_attn.v_proj.weight"])
    assert torch.equal(gate_up[: mlp.gate_proj.weight.shape[0]],
                       views["model.layers.0.mlp.gate_proj.weight"])
    expected, at = torch.cat([attn.q_proj.weight, attn.v_proj.weight]), qkv.data_ptr()
    qv = fuse_linears(attn.q_proj, attn.v_proj)  # one storage, k between them: not adjacent
    assert torch.equal(qv, expected) and qv.data_ptr() != at
    other = model(ALIGNED, torch.bfloat16)  # unpacked: a new matrix the weights then view
    attn = other.model.layers[0].self_attn
    expected = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
    qkv = fuse_linears(attn.q_proj, attn.k_proj, attn.v_proj)
    assert torch.equal(qkv, expected) and attn.q_proj.weight.data_ptr() == qkv.data_ptr()


def test_a_plan_lives_only_as_long_as_its_slot_views() -> None:
    from torch.multiprocessing.reductions import StorageWeakRef

    engine = model(ALIGNED, torch.bfloat16)
    pack_weights(engine)
    views = slot(model(ALIGNED, torch.float32, seed=1), torch.bfloat16)
    assert copy_hf_weights(engine, views) == "one copy"
    storage = StorageWeakRef(next(iter(views.values())).untyped_storage())
    del views  # the transport let go of the slot: the plan must not keep its memory
    assert storage.expired()
    for _ in range(3):  # new views (their ids may be the old ones): checked afresh
        bad = slot(model(ALIGNED, torch.float32, seed=2), torch.bfloat16)
        bad["model.norm.weight"] = bad["model.norm.weight"][:-1]
        with pytest.raises(ValueError, match=r"model\.norm\.weight"):
            copy_hf_weights(engine, bad)
        del bad
