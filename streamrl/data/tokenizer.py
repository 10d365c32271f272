"""A checkpoint's own tokenizer, loaded by transformers from local files, as our `Tokenizer`.

    tok = load_tokenizer(Path("Qwen2.5-0.5B-Instruct"))   # tokenizer.json, tokenizer_config.json
    text = tok.render_chat([{"role": "user", "content": "2+3?"}])   # its chat template
    ids = tok.encode(text)                                 # np.int32; the template has its specials
    tok.stop_token_ids                                     # generation_config.json's eos ids

Stop tokens are the checkpoint's end-of-sequence ids: `eos_token_id` of generation_config.json
(an int or a list, e.g. Qwen2.5-Instruct's `<|im_end|>` and `<|endoftext|>`), then the
tokenizer's own eos token if it is not among them. `stop_token_id` is the first of them (the
`Tokenizer` protocol's single id); producers stop on all of them. A tokenizer without a pad token
(Llama 3) pads with its first stop id: padding is masked out of every loss.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from streamrl.hooks.run import Tokenizer, stop_token_ids


class HFTokenizer:
    """An HF tokenizer behind the `Tokenizer` protocol, plus its chat template."""

    def __init__(self, inner: Any, stop_token_ids: tuple[int, ...], source: Path) -> None:
        self.inner, self.source = inner, source
        self._stop_token_ids = stop_token_ids
        self._vocab_size = len(inner)

    @property
    def vocab_size(self) -> int:
        """Tokens the tokenizer knows, added ones included (a model's embedding may be larger)."""
        return self._vocab_size

    @property
    def pad_token_id(self) -> int:
        pad = self.inner.pad_token_id
        return int(pad) if pad is not None else self._stop_token_ids[0]

    @property
    def bos_token_id(self) -> int | None:
        bos = self.inner.bos_token_id
        return int(bos) if bos is not None else None

    @property
    def stop_token_id(self) -> int:
        return self._stop_token_ids[0]

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Every id that ends an answer: the checkpoint's eos ids."""
        return self._stop_token_ids

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.inner, "chat_template", None))

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """`messages` through the chat template, ending with the assistant's turn opened
        (`add_generation_prompt=True`); the text includes the template's special tokens."""
        return self.inner.apply_chat_template(list(messages), add_generation_prompt=True,
                                              tokenize=False)

    def render_chats(self, conversations: Sequence[Sequence[dict[str, str]]]) -> list[str]:
        """`render_chat` of each conversation, in one call (a dataset's rows)."""
        if not conversations:
            return []
        return list(self.inner.apply_chat_template([list(c) for c in conversations],
                                                   add_generation_prompt=True, tokenize=False))

    def encode(self, text: str, *, bos: bool = False, stop: bool = False) -> npt.NDArray[np.int32]:
        """Ids of `text`, special tokens written in it included (a rendered chat template's);
        `bos` prepends the bos token if the tokenizer has one and the text does not start
        with it; `stop` appends the first stop id."""
        ids = list(self.inner.encode(text, add_special_tokens=False))
        if bos and self.bos_token_id is not None and ids[:1] != [self.bos_token_id]:
            ids.insert(0, self.bos_token_id)
        ids += [self.stop_token_id] * stop
        return np.asarray(ids, dtype=np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[npt.NDArray[np.int32]]:
        """`encode` of each text (no bos, no stop), in one call: the Rust tokenizer spreads a
        batch over its threads (a dataset's rows render in seconds, not minutes)."""
        batch = self.inner(list(texts), add_special_tokens=False)["input_ids"]
        return [np.asarray(ids, dtype=np.int32) for ids in batch]

    def decode(self, tokens: Iterable[int] | npt.NDArray[np.integer]) -> str:
        """Text of untrusted ids without special tokens; ids the tokenizer does not know are
        dropped. Never raises."""
        try:
            flat = np.asarray(tokens).reshape(-1).tolist()
        except (TypeError, ValueError):
            return ""
        ids = [int(t) for t in flat if isinstance(t, int) and 0 <= t < self._vocab_size]
        try:
            return str(self.inner.decode(ids, skip_special_tokens=True))
        except Exception:  # model output must never crash a producer
            return ""


def load_tokenizer(directory: str | Path) -> HFTokenizer:
    """The tokenizer saved in `directory` (local files only); `ValueError` naming the directory
    when there is none or it has no end-of-sequence token to stop on."""
    directory = Path(directory)
    from transformers import AutoTokenizer  # heavy: only processes that need it import it

    try:
        inner = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"no tokenizer in {directory} (tokenizer.json, tokenizer_config.json): "
                         f"{error}; or name one with data.tokenizer") from None
    stops = _generation_eos(directory)
    if inner.eos_token_id is not None and int(inner.eos_token_id) not in stops:
        stops.append(int(inner.eos_token_id))
    if not stops:
        raise ValueError(f"the tokenizer in {directory} has no end-of-sequence token and "
                         "generation_config.json names no eos_token_id: generation could not "
                         "stop")
    bad = [t for t in stops if not 0 <= t < len(inner)]
    if bad:
        raise ValueError(f"{directory}: eos ids {bad} lie outside the tokenizer's "
                         f"{len(inner)} tokens")
    return HFTokenizer(inner, tuple(stops), directory)


def _generation_eos(directory: Path) -> list[int]:
    path = directory / "generation_config.json"
    if not path.is_file():
        return []
    try:
        eos = json.loads(path.read_text()).get("eos_token_id")
    except (json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"{path} is not a JSON object: {error}") from None
    ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise ValueError(f"{path}: eos_token_id must be an id or a list of ids, got {eos!r}")
    return list(dict.fromkeys(ids))


def check_fits(tokenizer: Tokenizer, checkpoint: Path) -> None:
    """Every id the tokenizer can produce, stop ids included, must be a row of the model's
    embedding (config.json `vocab_size`, which may be larger): otherwise the engine would refuse
    the first prompt in the middle of the run."""
    vocab = json.loads((checkpoint / "config.json").read_text()).get("vocab_size")
    if not isinstance(vocab, int):
        return  # a config that nests it (multimodal); the model family's loader checks it
    largest = max(tokenizer.vocab_size - 1, *stop_token_ids(tokenizer))
    if largest >= vocab:
        raise ValueError(f"the tokenizer has ids up to {largest}, but the model in {checkpoint} "
                         f"has vocab_size {vocab}: use the checkpoint's own tokenizer, or one "
                         "that fits it")
