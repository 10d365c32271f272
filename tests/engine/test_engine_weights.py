"""Weight updates between steps: in-flight sequences continue on the new weights, stamped with
the new version; bad updates are refused without touching the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamrl.models.checkpoint import read_safetensors
from tests.engine.engine_util import LOGPROB_ATOL, engine, request, run_to_end

SWAP_AFTER = 5  # steps; step 1 prefills and samples token 0, each later step one more token


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_load_weights_mid_generation(kind: str, request_fixture) -> None:
    old, new = request_fixture(kind), request_fixture(f"{kind}_next")
    new_weights = read_safetensors(new.path)  # HF names, per-expert MoE layout
    req = request("swap", length=5, temperature=1.0, max_new_tokens=12)
    (base,) = engine(old.path).generate([req])

    eng = engine(old.path)
    eng.add_request(req)
    for _ in range(SWAP_AFTER):
        assert eng.step() == []
    eng.load_weights(new_weights, version=1)
    assert eng.version == 1
    (swapped,) = run_to_end(eng)

    expected_versions = [0] * SWAP_AFTER + [1] * (12 - SWAP_AFTER)
    assert swapped.response_versions.tolist() == expected_versions
    assert swapped.response_versions.dtype == np.uint32
    np.testing.assert_array_equal(
        swapped.response_tokens[:SWAP_AFTER], base.response_tokens[:SWAP_AFTER]
    )
    np.testing.assert_array_equal(swapped.logprobs[:SWAP_AFTER], base.logprobs[:SWAP_AFTER])
    # From the swap on, every token was scored by other weights than in the run without it.
    assert (swapped.logprobs[SWAP_AFTER:] != base.logprobs[SWAP_AFTER:]).all()
    if swapped.routed_experts is not None:
        np.testing.assert_array_equal(
            swapped.routed_experts[:SWAP_AFTER], base.routed_experts[:SWAP_AFTER]
        )


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_loaded_weights_equal_the_checkpoint(kind: str, request_fixture) -> None:
    """Loading version 1 before any step samples exactly what an engine built from the new
    checkpoint samples: every parameter, experts included, was replaced."""
    old, new = request_fixture(kind), request_fixture(f"{kind}_next")
    req = request("fresh", length=7, temperature=0.9, max_new_tokens=10)
    eng = engine(old.path)
    eng.load_weights(read_safetensors(new.path), version=1)
    (loaded,) = eng.generate([req])
    (ref,) = engine(new.path).generate([req])
    np.testing.assert_array_equal(loaded.response_tokens, ref.response_tokens)
    np.testing.assert_allclose(loaded.logprobs, ref.logprobs, rtol=0, atol=LOGPROB_ATOL)
    assert loaded.response_versions.tolist() == [1] * 10


def test_bad_weight_updates_leave_the_model_untouched(dense, dense_next) -> None:
    eng = engine(dense.path)
    before = {k: v.clone() for k, v in eng.model.state_dict().items()}
    weights = read_safetensors(dense_next.path)
    missing = {k: v for k, v in weights.items() if k != "model.norm.weight"}
    with pytest.raises(ValueError, match="missing"):
        eng.load_weights(missing, version=1)
    bad_shape = {**weights, "model.norm.weight": torch.ones(3)}
    with pytest.raises(ValueError, match="shape"):
        eng.load_weights(bad_shape, version=1)
    assert eng.version == 0
    for name, t in eng.model.state_dict().items():
        assert torch.equal(t, before[name]), name
    eng.load_weights(weights, version=3)
    with pytest.raises(ValueError, match="not newer"):
        eng.load_weights(weights, version=3)
    assert eng.version == 3
