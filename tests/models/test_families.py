"""Every model family beyond Qwen3 computes what transformers computes, loads what transformers
writes, writes what transformers loads, and the engine's logprobs are the trainer's."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
import torch

from streamrl.models import ModelConfig, load_checkpoint, save_checkpoint
from streamrl.models.checkpoint import read_safetensors
from tests.engine.engine_util import LOGPROB_ATOL, engine, request, teacher_forced
from tests.models.tiny import ATOL, FAMILIES, Tiny, batch, build_family


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory) -> Tiny:
    return build_family(tmp_path_factory.mktemp(request.param), request.param, seed=7)


def test_logits_match_transformers(family: Tiny) -> None:
    model = load_checkpoint(family.path)
    assert model.config.model_type == family.ref.config.model_type
    tokens, positions = batch(3, 40)
    with torch.no_grad():
        ours, ref = model(tokens, positions).logits, family.ref(tokens).logits
    assert (ours - ref).abs().max().item() <= ATOL
    assert ref.std(dim=-1).min() > 0.1  # logits far from constant: the match means something


def test_packed_rows_match_transformers_per_sequence(family: Tiny) -> None:
    """Two sequences packed in one row (positions restart) give each sequence's own logits."""
    model = load_checkpoint(family.path)
    (a, b), _ = batch(2, 24, seed=3)
    tokens = torch.cat([a, b[:20]])[None]
    positions = torch.cat([torch.arange(24), torch.arange(20)])[None]
    with torch.no_grad():
        packed = model(tokens, positions).logits[0]
        ref_a, ref_b = family.ref(a[None]).logits[0], family.ref(b[None, :20]).logits[0]
    assert (packed[:24] - ref_a).abs().max() <= ATOL
    assert (packed[24:] - ref_b).abs().max() <= ATOL


def test_family_switches_change_the_output(family: Tiny) -> None:
    """The switch that makes the family differ is live: turning it off changes the logits
    (llama3 frequencies, Mistral's window shorter than the sequence)."""
    model = load_checkpoint(family.path)
    c = model.config
    off = {"rope_scaling": None} if c.rope_scaling else {}
    off |= {"sliding_window": None} if c.sliding_window else {}
    if not off:
        assert c.qkv_bias or not c.qk_norm  # qwen2's biases / llama's missing q/k norm
        return
    tokens, positions = batch(1, 40)
    with torch.no_grad():
        a = model(tokens, positions).logits
        model.config = msgspec.structs.replace(c, **off)
        model.model.config = model.config
        model.model.rotary.scaling = model.config.rope_scaling
        b = model(tokens, positions).logits
    assert (a - b).abs().max() > 1e-3


def test_save_load_in_transformers_is_exact(family: Tiny, tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    model = load_checkpoint(family.path)
    save_checkpoint(model, tmp_path)
    original, ours = read_safetensors(family.path), read_safetensors(tmp_path)
    assert ours.keys() == original.keys()
    assert all(torch.equal(ours[n], t) for n, t in original.items())
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(ref) is type(family.ref)
    assert ModelConfig.from_file(tmp_path) == model.config
    tokens, _ = batch(2, 30)
    with torch.no_grad():
        assert torch.equal(ref(tokens).logits, family.ref(tokens).logits)


def test_engine_logprobs_equal_trainer_logprobs(family: Tiny) -> None:
    """The eager engine (KV cache, continuous batching; prompts past Mistral's window) records
    the logprobs a teacher-forced forward gives."""
    eng = engine(family.path, max_batch_size=2)
    results = eng.generate([request(f"r{i}", length=5 + 9 * i, max_new_tokens=10,
                                    temperature=1.0) for i in range(3)])
    worst = max(float(np.abs(teacher_forced(eng.model, r, 1.0)[0] - r.logprobs).max())
                for r in results)
    assert worst <= LOGPROB_ATOL

