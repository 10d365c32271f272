"""copy_hf_weights reuses its checked plan when handed the very same source tensors again (as
cuda_ipc's ring slots are), and still copies their current values and refuses bad input."""

from __future__ import annotations

import pytest
import torch

from streamrl.models import CausalLM, ModelConfig
from streamrl.models.checkpoint import to_hf_names
from streamrl.producers.engine.weights import copy_hf_weights

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CONFIG = ModelConfig(model_type="qwen3", vocab_size=64, hidden_size=32, intermediate_size=48,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     head_dim=8, tie_word_embeddings=True)


CASES = [("cpu", torch.float32, torch.float32),
         pytest.param("cuda", torch.bfloat16, torch.bfloat16, marks=CUDA),
         pytest.param("cuda", torch.bfloat16, torch.float32, marks=CUDA)]  # a cast


@pytest.mark.parametrize(("device", "engine_dtype", "slot_dtype"), CASES)
def test_the_same_sources_again_copy_their_new_values_and_bad_input_is_still_refused(
        device: str, engine_dtype: torch.dtype, slot_dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    engine = CausalLM(CONFIG).to(device, engine_dtype)
    trainer = CausalLM(CONFIG).to(device, slot_dtype)
    slot = to_hf_names(trainer.state_dict(), CONFIG)  # one "ring slot": reused objects
    for step in range(3):
        with torch.no_grad():
            for t in slot.values():
                t.add_(0.5)  # the next version lands in the same tensors
        if step == 1:  # the plan was made in inference mode (the engine's); used outside it
            copy_hf_weights(engine, dict(slot))
        else:
            with torch.inference_mode():
                copy_hf_weights(engine, dict(slot))
        for name, p in engine.named_parameters():
            assert torch.equal(p, slot[name].to(engine_dtype)), (step, name)
    before = {n: p.clone() for n, p in engine.named_parameters()}
    bad = dict(slot)
    bad["model.norm.weight"] = torch.ones(7, device=device)
    with pytest.raises(ValueError, match=r"model\.norm\.weight"):
        copy_hf_weights(engine, bad)
    del bad["model.norm.weight"]
    with pytest.raises(ValueError, match="missing"):
        copy_hf_weights(engine, bad)
    assert all(torch.equal(p, before[n]) for n, p in engine.named_parameters())
