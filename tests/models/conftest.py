"""Session-scoped tiny checkpoints (see `tiny.py`); each is built once per test run."""

from __future__ import annotations

import pytest

from tests.models.tiny import Tiny, build


@pytest.fixture(scope="session")
def dense(tmp_path_factory) -> Tiny:
    return build(tmp_path_factory.mktemp("dense"), moe=False)


@pytest.fixture(scope="session")
def dense_tied(tmp_path_factory) -> Tiny:
    return build(tmp_path_factory.mktemp("dense_tied"), moe=False, seed=1, tie_word_embeddings=True)


@pytest.fixture(scope="session")
def moe(tmp_path_factory) -> Tiny:
    """8 experts, top-2, renormalized weights; layer 1 dense via `mlp_only_layers`."""
    return build(
        tmp_path_factory.mktemp("moe"),
        moe=True,
        seed=2,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        mlp_only_layers=[1],
    )


@pytest.fixture(scope="session")
def moe_sparse_step(tmp_path_factory) -> Tiny:
    """6 experts, top-3, raw softmax weights; every 2nd layer sparse via `decoder_sparse_step`."""
    return build(
        tmp_path_factory.mktemp("moe_step"),
        moe=True,
        seed=3,
        num_hidden_layers=4,
        num_experts=6,
        num_experts_per_tok=3,
        norm_topk_prob=False,
        decoder_sparse_step=2,
    )


@pytest.fixture(params=["dense", "dense_tied", "moe", "moe_sparse_step"])
def tiny(request) -> Tiny:
    return request.getfixturevalue(request.param)
