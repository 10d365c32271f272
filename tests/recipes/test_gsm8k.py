"""The gsm8k recipe's parts: word problems as veRL parquet, the BPE tokenizer as an HF tokenizer
with a ChatML template, and recipe_real.toml loading against a downloaded-model layout (a tiny
Qwen2 checkpoint written by transformers, GSM8K's column names). The whole CPU recipe runs in
test_gsm8k_run.py."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recipes.gsm8k.task import make_problems, write_parquet
from recipes.gsm8k.tokenizer import IM_END, train_tokenizer
from streamrl.data.dataset import read_dataset
from streamrl.data.tokenizer import load_tokenizer
from streamrl.recipe.config import load_recipe
from tests.helpers import REPO


def test_problems_are_seeded_held_out_and_written_in_verl_columns(tmp_path: Path) -> None:
    train = make_problems(seed=0, num_problems=300, split="train")
    assert train == make_problems(seed=0, num_problems=300, split="train")
    assert train != make_problems(seed=1, num_problems=300, split="train")
    held_out = make_problems(seed=0, num_problems=100, split="eval")
    assert not {p.question for p in train} & {p.question for p in held_out}
    assert {p.operation for p in train} == {"add", "sub"}

    path = write_parquet(train, tmp_path / "train.parquet", split="train")
    table = pq.read_table(path)
    assert table.column_names == ["data_source", "prompt", "ability", "reward_model",
                                  "extra_info"]
    row = table.slice(0, 1).to_pylist()[0]
    p = train[0]
    assert row["prompt"] == [{"role": "user", "content": p.question + " Put the final answer "
                              "in \\boxed{}."}]
    assert row["reward_model"] == {"style": "rule", "ground_truth": str(p.answer)}
    assert row["extra_info"]["answer"].endswith(f"\\boxed{{{p.answer}}}")
    # streamrl's own dataset reader takes the file as veRL's convention
    first = read_dataset(path).rows[0]
    assert first.metadata["ground_truth"] == str(p.answer)
    assert first.prompt[0].content == row["prompt"][0]["content"]


def test_the_trained_tokenizer_is_an_hf_tokenizer_with_a_chatml_template(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    directory = train_tokenizer(tmp_path)
    assert (directory / "tokenizer.json").read_bytes() == \
        train_tokenizer(tmp_path / "again").joinpath("tokenizer.json").read_bytes()
    tok = AutoTokenizer.from_pretrained(str(directory))
    p = make_problems(seed=0, num_problems=1, split="eval")[0]
    text = tok.apply_chat_template(p.messages(), add_generation_prompt=True, tokenize=False)
    assert text == f"<|im_start|>user\n{p.messages()[0]['content']}<|im_end|>\n" \
                   "<|im_start|>assistant\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) < 48  # the task's words are whole tokens
    assert tok.decode(tok.encode(p.solution())) == p.solution()
    assert tok.decode(tok.encode("any text: ünïcode ∑ 中文")) == "any text: ünïcode ∑ 中文"
    # what a run loads: the eos from tokenizer_config.json stops generation
    ours = load_tokenizer(directory)
    assert ours.stop_token_ids == (tok.convert_tokens_to_ids(IM_END),)
    assert ours.decode([*ours.encode("7. \\boxed{7}"), ours.stop_token_id]) == "7. \\boxed{7}"


@pytest.fixture
def downloaded(tmp_path: Path) -> Path:
    """What a user has after downloading a model and GSM8K: a Qwen2 checkpoint directory written
    by transformers (tiny, random) with a tokenizer, and GSM8K's parquet files."""
    import pyarrow as pa
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model_dir = train_tokenizer(tmp_path / "models" / "Qwen2.5-0.5B-Instruct")
    vocab = json.loads((model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    config = Qwen2Config(vocab_size=len(vocab) + 3, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True, eos_token_id=2)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(model_dir)
    data = tmp_path / "data" / "gsm8k" / "main"
    data.mkdir(parents=True)
    rows = {"question": ["Tom has 3 apples and buys 4 more. How many apples does he have?"] * 4,
            "answer": ["3 + 4 = <<3+4=7>>7 apples.\n#### 7"] * 4}
    for split in ("train", "test"):
        pq.write_table(pa.table(rows), data / f"{split}-00000-of-00001.parquet")
    return tmp_path


def test_the_real_recipe_loads_a_downloaded_model_and_gsm8k(downloaded: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """recipe_real.toml as a user runs it, from the directory holding models/ and data/: every
    GSM8K row is rendered with the checkpoint's template and system prompt before the run."""
    monkeypatch.chdir(downloaded)
    config, hooks = load_recipe(REPO / "recipes" / "gsm8k" / "recipe_real.toml")
    assert config.model.path == str(downloaded / "models" / "Qwen2.5-0.5B-Instruct")
    specs = hooks.prompts.load().specs
    assert len(specs) == 4
    text = hooks.tokenizer.decode(specs[0].tokens)
    assert "Please reason step by step" in text and "How many apples" in text


def test_the_math_reward_and_the_evaluator_agree_on_the_students_answers() -> None:
    """The run's reward (built-in `math`, by name) and the recipe's evaluator score the worked
    answer correct and the misread one wrong; garbled output is a status, never an exception."""
    import numpy as np

    from recipes.gsm8k.evaluate import score
    from streamrl.hooks.rollout import RewardInput
    from streamrl.recipe.rewards import build_reward

    reward = build_reward("math", {})
    sub = next(p for p in make_problems(seed=0, num_problems=50, split="train")
               if p.operation == "sub")
    cases = {sub.solution(): ("correct", 1.0), sub.solution(operation="add"): ("wrong", 0.0)}
    for text, (status, value) in cases.items():
        sample = RewardInput(prompt_id="p", prompt_text=None,
                             prompt_tokens=np.zeros(1, np.int32), response_text=text,
                             response_tokens=np.zeros(1, np.int32), finish_reason="stop",
                             metadata={"ground_truth": str(sub.answer)})
        assert (reward(sample).status, reward(sample).reward) == (status, value)
        assert score(text, str(sub.answer)) == status
    assert score("\\boxed{7", "7") == score("seven", "7") == "unparsable"
    assert score("\\boxed{" + "9" * 5000 + "}", "7") == "unparsable"
    assert score("3 + 4 = 7. \\boxed{7}", "7", finish_reason="length") == "truncated"
