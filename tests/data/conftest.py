"""A tiny HF checkpoint with its tokenizer and chat template, written once per test session, and
the recipe that starts from it (`data_recipe`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.tiny_checkpoint import write_checkpoint


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-qwen3")


def data_recipe(checkpoint: Path, train: Path, *, data: str = "", model: str = "") -> str:
    """A run-plumbing recipe on `checkpoint` and dataset `train`; `data` and `model` add lines
    to those sections."""
    return f'''[run]
name = "tiny-data"
seed = 3
max_versions = 2

[model]
path = "{checkpoint}"
{model}
[data]
train = "{train}"
samples_per_prompt = 4
{data}
[rollout]
reward = "tests.data.tiny_checkpoint:reward"
max_new_tokens = 3
engine = {{ max_batch_size = 16, max_seq_len = 64 }}

[trainer]
batch_size = 8
lr = 1e-3
checkpoint_every = 2

[staleness]
policy = "streamrl.staleness:MaxLag"
options = {{ max_lag = 1, on_stale = "requeue" }}
'''
