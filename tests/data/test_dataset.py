"""Dataset files in three formats and two conventions read into the same rows; a stable digest;
a seeded order over epochs; prompts rendered through the checkpoint's chat template."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from streamrl.data import DatasetPrompts, PromptOptions, epoch_order, load_tokenizer, read_dataset
from streamrl.hooks.run import PromptRequest
from tests.data.tiny_checkpoint import trl_rows, verl_rows, write_dataset

FORMATS = ["train.jsonl", "train.parquet", "train_saved"]  # the last: datasets.save_to_disk


@pytest.mark.parametrize("name", FORMATS)
def test_verl_rows_read_alike_in_every_format(tmp_path: Path, name: str) -> None:
    dataset = read_dataset(write_dataset(tmp_path / name, verl_rows(3)))
    row = dataset.rows[2]
    assert [(m.role, m.content) for m in row.prompt] == [("user", "What is 2 + 3?")]
    assert row.metadata["ground_truth"] == "5"  # reward_model.ground_truth, for rewards by name
    assert row.metadata["data_source"] == "tiny_add"
    assert row.metadata["extra_info"] == {"index": 2, "split": "train"}
    assert row.metadata["reward_model"]["style"] == "rule"


@pytest.mark.parametrize("name", FORMATS)
def test_trl_rows_pass_every_other_column_by_name(tmp_path: Path, name: str) -> None:
    dataset = read_dataset(write_dataset(tmp_path / name, trl_rows(3)))
    assert [r.prompt for r in dataset.rows] == [f"What is {i} + 3?" for i in range(3)]
    assert dataset.rows[1].metadata == {"answer": "4", "difficulty": 1}


def test_the_digest_is_the_file_sha256_and_stable(tmp_path: Path) -> None:
    for name in ("a.parquet", "a.jsonl"):
        path = write_dataset(tmp_path / name, verl_rows(4))
        assert read_dataset(path).digest == hashlib.sha256(path.read_bytes()).hexdigest()
    first = read_dataset(write_dataset(tmp_path / "saved_1", verl_rows(4))).digest
    again = read_dataset(write_dataset(tmp_path / "saved_2", verl_rows(4))).digest
    other = read_dataset(write_dataset(tmp_path / "saved_3", verl_rows(5))).digest
    assert first == again != other


def test_epochs_are_seeded_permutations_and_num_prompts_cycles() -> None:
    order = epoch_order(5, seed=7, epochs=3, num_prompts=None, shuffle=True)
    assert [sorted(order[i:i + 5]) for i in (0, 5, 10)] == [list(range(5))] * 3
    assert order[:5] != order[5:10]  # reshuffled every epoch
    assert order == epoch_order(5, seed=7, epochs=3, num_prompts=None, shuffle=True)
    assert order != epoch_order(5, seed=8, epochs=3, num_prompts=None, shuffle=True)
    assert epoch_order(5, seed=7, epochs=None, num_prompts=12, shuffle=True) == order[:12]
    assert epoch_order(3, seed=7, epochs=2, num_prompts=None, shuffle=False) == [0, 1, 2] * 2


def test_prompts_are_rendered_with_the_system_prompt_in_seeded_order(
        checkpoint: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(checkpoint)
    path = write_dataset(tmp_path / "train.parquet", trl_rows(6))
    source = DatasetPrompts(path, split="train", tokenizer=tok, options=PromptOptions(
        system_prompt="Be brief.", epochs=2))
    specs = source(PromptRequest(seed=1, num_prompts=0))
    assert len(specs) == 12 and specs == source(PromptRequest(seed=1, num_prompts=0))
    first = specs[0]
    row = int(first.prompt_id.rsplit("-", 1)[1])
    assert first.prompt_id == f"train-{source.digest[:12]}-{row}"  # the same in every run
    assert first.text == tok.render_chat([{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": f"What is {row} + 3?"}])
    assert first.tokens == tuple(tok.encode(first.text).tolist())
    assert first.metadata == {"answer": str(row + 3), "difficulty": row % 3}
    assert [s.prompt_id for s in specs] != [s.prompt_id for s in
                                           source(PromptRequest(seed=2, num_prompts=0))]


def test_raw_prompts_skip_the_template(checkpoint: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(checkpoint)
    path = write_dataset(tmp_path / "train.jsonl", trl_rows(2))
    source = DatasetPrompts(path, split="train", tokenizer=tok, options=PromptOptions(
        apply_chat_template=False, shuffle=False))
    spec = source(PromptRequest(seed=0, num_prompts=0))[0]
    assert spec.text == "What is 0 + 3?"
    assert spec.tokens == tuple(tok.encode("What is 0 + 3?").tolist())
