"""A byte-level BPE tokenizer trained on the task's text, saved as an HF tokenizer directory.

    train_tokenizer("runs/gsm8k/model")            # tokenizer.json + tokenizer_config.json
    AutoTokenizer.from_pretrained("runs/gsm8k/model").apply_chat_template(
        [{"role": "user", "content": "..."}], add_generation_prompt=True)

Built like the Qwen2/Qwen3 tokenizers a real run loads: byte-level BPE (any text encodes, any id
sequence decodes), digits split one per token before BPE runs, the special tokens
<|endoftext|>, <|im_start|>, <|im_end|>, and a ChatML chat template in which the assistant's
turn ends with <|im_end|>, the eos that stops generation. Trained with the `tokenizers` library
on the recipe's own problems and solutions, so the vocabulary is small (VOCAB_SIZE ids) and a
question is ~30 tokens. Deterministic: the same text gives the same tokenizer.json.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from recipes.gsm8k.task import ITEMS, NAMES, TEMPLATES, WordProblem

VOCAB_SIZE = 512
"""Byte alphabet (256) + special tokens + merges learned from the task's text."""
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
"""Ids 0, 1, 2. <|im_end|> is the eos; <|endoftext|> pads."""

# ChatML, as Qwen2.5 and Qwen3 render it: an optional system turn, then each message framed by
# <|im_start|>role\n ... <|im_end|>\n, and with add_generation_prompt the assistant's header.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Pre-tokenization: words with their leading space, single digits, runs of punctuation,
# whitespace (the shape of the GPT-2 / Qwen split; one digit per token as in Qwen).
_SPLIT = Regex(r" ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]+|\s+")


def corpus(problems: Iterable[WordProblem]) -> Iterable[str]:
    """Every text the tokenizer should encode compactly: questions with their instruction,
    right and misread solutions, the role names."""
    yield "user assistant system"
    for p in problems:
        yield p.messages()[0]["content"]
        yield p.solution(operation="add")
        yield p.solution(operation="sub")


def build(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(_SPLIT, behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def training_problems() -> list[WordProblem]:
    """One problem per (template, name, item), so every word of the task is in the corpus."""
    return [WordProblem(question=text.format(n=n, i=i + "s", a=7, b=3), operation=op, a=7, b=3,
                        template=t)
            for t, (op, text) in enumerate(TEMPLATES) for n in NAMES for i in ITEMS]


def train_tokenizer(out_dir: str | Path, vocab_size: int = VOCAB_SIZE) -> Path:
    """Train the tokenizer and write an HF tokenizer directory that `AutoTokenizer` loads:
    tokenizer.json, tokenizer_config.json (chat template, eos, pad). Returns `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build(corpus(training_problems()), vocab_size)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "bos_token": None,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 256,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
