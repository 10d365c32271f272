"""Tiny dense and MoE checkpoints written by transformers (see tests/models/tiny.py), built once
per run; the `*_next` ones are a second, independent set of weights for weight-update tests."""

from __future__ import annotations

import pytest

from tests.models.tiny import Tiny, build

MOE = dict(num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1])


@pytest.fixture(autouse=True)
def _one_thread(one_thread) -> None:
    """Every test here runs tiny models: one intra-op thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def dense(tmp_path_factory) -> Tiny:
    return build(tmp_path_factory.mktemp("dense"), moe=False, seed=0)


@pytest.fixture(scope="session")
def moe(tmp_path_factory) -> Tiny:
    """8 experts, top-2, renormalized; layer 1 dense (so routing has 2 MoE layers)."""
    return build(tmp_path_factory.mktemp("moe"), moe=True, seed=2, **MOE)


@pytest.fixture(scope="session")
def dense_next(tmp_path_factory) -> Tiny:
    return build(tmp_path_factory.mktemp("dense_next"), moe=False, seed=10)


@pytest.fixture(scope="session")
def moe_next(tmp_path_factory) -> Tiny:
    return build(tmp_path_factory.mktemp("moe_next"), moe=True, seed=12, **MOE)


@pytest.fixture(params=["dense", "moe"])
def tiny(request) -> Tiny:
    return request.getfixturevalue(request.param)


@pytest.fixture
def request_fixture(request):
    """Look a checkpoint fixture up by name (for tests parametrized over model kinds)."""
    return request.getfixturevalue
