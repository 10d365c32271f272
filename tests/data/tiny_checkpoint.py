"""What tests/data builds on: a real HF checkpoint directory and real dataset files, all written
here by the installed libraries (nothing downloaded).

    ckpt = write_checkpoint(tmp_path / "ckpt")   # BPE tokenizer + Qwen chat template + tiny Qwen3
    write_dataset(tmp_path / "train.parquet", verl_rows(8))         # or .jsonl, or a directory
    reward                                       # a reward hook that reads the dataset's columns

The tokenizer is a byte-level BPE trained with the `tokenizers` library and saved as an HF
tokenizer (`PreTrainedTokenizerFast.save_pretrained`) with a Qwen-style chat template;
generation_config.json names two eos ids, as Qwen2.5-Instruct's does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from streamrl.hooks.rollout import RewardInput, RewardOutput
from streamrl.hooks.run import PROMPT_TEXT

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ["What is 2 + 3? The answer is 5.", "You are a careful solver. Answer in a box.",
          "system user assistant", "Add the numbers: 17 and 25 make 42."]


def write_checkpoint(out: Path, *, template: str | None = QWEN_TEMPLATE,
                     eos_ids: bool = True) -> Path:
    """A tiny random-init Qwen3 checkpoint (transformers' own files) and its tokenizer in `out`;
    `eos_ids=False` leaves generation_config.json without eos ids (the tokenizer's eos only)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    if template is not None:
        tok.chat_template = template
    config = Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=16, max_position_embeddings=256, tie_word_embeddings=True)
    import torch

    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    (out / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": eos} if eos_ids else {}))
    return out


def verl_rows(n: int) -> list[dict[str, Any]]:
    """veRL's convention: chat-message prompts, `reward_model.ground_truth`, `data_source`."""
    return [{"data_source": "tiny_add", "ability": "math",
             "prompt": [{"role": "user", "content": f"What is {i} + 3?"}],
             "reward_model": {"style": "rule", "ground_truth": str(i + 3)},
             "extra_info": {"index": i, "split": "train"}} for i in range(n)]


def trl_rows(n: int) -> list[dict[str, Any]]:
    """TRL's convention: a string prompt; every other column is the reward's by name."""
    return [{"prompt": f"What is {i} + 3?", "answer": str(i + 3), "difficulty": i % 3}
            for i in range(n)]


def write_dataset(path: Path, rows: list[dict[str, Any]]) -> Path:
    """`rows` as JSONL (.jsonl), parquet (.parquet) or, for any other name, a directory written
    by `datasets.Dataset.save_to_disk`."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def reward(sample: RewardInput) -> RewardOutput:
    """1 when the response starts with the ground truth; records which dataset fields arrived."""
    truth = sample.metadata.get("ground_truth", sample.metadata.get("answer"))
    right = truth is not None and sample.response_text.strip().startswith(str(truth))
    seen = {"has_ground_truth": float("ground_truth" in sample.metadata),
            "has_data_source": float(sample.metadata.get("data_source") == "tiny_add"),
            "has_prompt_text": float(sample.prompt_text is not None
                                     and sample.prompt_text == sample.metadata.get(PROMPT_TEXT)
                                     and sample.prompt_text.endswith("<|im_start|>assistant\n"))}
    return RewardOutput(reward=float(right), details=seen, status="correct" if right else "wrong")
