"""A dataset file as the run's prompts: rows rendered with the chat template into token ids, in a
seeded order over epochs. Rendering happens once, in the driver's process, when the recipe loads
(`load`), so a template that fails to render is an error naming the file and row before anything
is written; the log records the rendered ids, and producers never see a template.

    prompts = DatasetPrompts(path, split="train", tokenizer=tok, options=PromptOptions())
    prompts.load()                                   # reads, checks and renders every row (once)
    prompts(PromptRequest(seed=0, num_prompts=0))    # PromptSpecs with `tokens`, seeded order

A `DatasetPrompts` is a `PromptSource`: the driver publishes it like a recipe's prompts hook.
Its count comes from its options (`epochs` passes, or `num_prompts`), not from the request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from streamrl.data.dataset import DataError, Dataset, Message, Row, read_dataset
from streamrl.hooks.run import PROMPT_TEXT, ChatTokenizer, PromptRequest, PromptSpec, Tokenizer


class PromptOptions(msgspec.Struct, kw_only=True, frozen=True):
    """How rows become prompts (the `[data]` fields of the same names)."""

    prompt_key: str = "prompt"
    system_prompt: str | None = None
    apply_chat_template: bool = True
    shuffle: bool = True
    epochs: int | None = None  # passes over the rows (default 1 unless num_prompts is set)
    num_prompts: int | None = None  # else: exactly this many, over as many epochs as needed


class Rendered(msgspec.Struct, kw_only=True, frozen=True):
    dataset: Dataset
    specs: tuple[PromptSpec, ...]  # one per row, in file order


class DatasetPrompts:
    """The prompts of one dataset file (split "train" or "eval"), rendered on first `load`."""

    def __init__(self, path: str | Path, *, split: str, tokenizer: Tokenizer,
                 options: PromptOptions) -> None:
        self.path, self.split, self.tokenizer, self.options = Path(path), split, tokenizer, options
        self._rendered: Rendered | None = None

    def load(self) -> Rendered:
        """Read, check and render every row (the first call only); `DataError` names the first
        row that cannot be used."""
        if self._rendered is None:
            dataset = read_dataset(self.path, prompt_key=self.options.prompt_key)
            texts = self._texts(dataset)
            specs = tuple(self._spec(dataset, row, text, tokens) for row, text, tokens
                          in zip(dataset.rows, texts, self._encode(texts), strict=True))
            self._rendered = Rendered(dataset=dataset, specs=specs)
        return self._rendered

    @property
    def digest(self) -> str:
        return self.load().dataset.digest

    def __call__(self, request: PromptRequest) -> list[PromptSpec]:
        """The prompts in publishing order: rows shuffled by (request.seed, epoch) afresh in
        every epoch (or in file order with `shuffle = false`), cut to `num_prompts`."""
        specs = self.load().specs
        return [specs[i] for i in epoch_order(len(specs), seed=request.seed,
                                              epochs=self.options.epochs,
                                              num_prompts=self.options.num_prompts,
                                              shuffle=self.options.shuffle)]

    def _encode(self, texts: list[str]) -> list[Any]:
        """Ids of each rendered text; a rendered chat template carries its own specials (bos
        included where the model wants one), plain text gets the tokenizer's bos."""
        batch = getattr(self.tokenizer, "encode_batch", None)
        if self.options.apply_chat_template and batch is not None:
            return batch(texts)
        return [self.tokenizer.encode(t, bos=not self.options.apply_chat_template)
                for t in texts]

    def _spec(self, dataset: Dataset, row: Row, text: str, tokens: Any) -> PromptSpec:
        if len(tokens) == 0:
            raise DataError(f"{self._where(dataset, row)}: the prompt encodes to no tokens")
        return PromptSpec(prompt_id=f"{self.split}-{dataset.digest[:12]}-{row.index}", text=text,
                          tokens=tuple(np.asarray(tokens).tolist()), metadata=row.metadata)

    def _where(self, dataset: Dataset, row: Row) -> str:
        return f"dataset {dataset.path} row {row.index}, column {self.options.prompt_key!r}"

    def _texts(self, dataset: Dataset) -> list[str]:
        """Every row's prompt as text: through the chat template (all rows in one call when the
        tokenizer can; row by row to name the one that fails), or as it is."""
        for row in dataset.rows:
            if PROMPT_TEXT in row.metadata:
                raise DataError(f"dataset {dataset.path} row {row.index}: column "
                                f"{PROMPT_TEXT!r} is reserved (the rendered prompt's text goes "
                                "there); rename it")
        if not self.options.apply_chat_template:
            for row in dataset.rows:
                if not isinstance(row.prompt, str):
                    raise DataError(f"{self._where(dataset, row)}: chat messages need the chat "
                                    "template: set data.apply_chat_template = true")
            return [str(row.prompt) for row in dataset.rows]
        tok = self.tokenizer
        if not isinstance(tok, ChatTokenizer) or not tok.has_chat_template:
            raise DataError(f"{self._where(dataset, dataset.rows[0])}: the tokenizer has no chat "
                            "template to render prompts with: use a checkpoint whose tokenizer "
                            "has chat_template, or set data.apply_chat_template = false for "
                            "string prompts")
        conversations = [self._messages(row.prompt) for row in dataset.rows]
        render_all = getattr(tok, "render_chats", None)
        texts: list[Any] | None = None
        if render_all is not None:
            try:
                texts = list(render_all(conversations))
            except Exception:  # a template is user code: find the row it fails on, below
                texts = None
        if texts is None:
            texts = [self._render(tok, dataset, row, c)
                     for row, c in zip(dataset.rows, conversations, strict=True)]
        for row, text in zip(dataset.rows, texts, strict=True):
            if not isinstance(text, str) or not text:
                raise DataError(f"{self._where(dataset, row)}: the chat template rendered "
                                f"{text!r}, expected text")
        return texts

    def _messages(self, prompt: str | tuple[Message, ...]) -> list[dict[str, str]]:
        messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                    else [{"role": m.role, "content": m.content} for m in prompt])
        system = self.options.system_prompt
        if system is not None and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system})
        return messages

    def _render(self, tok: ChatTokenizer, dataset: Dataset, row: Row,
                messages: list[dict[str, str]]) -> str:
        try:
            return tok.render_chat(messages)
        except Exception as error:  # a template is user code: name the row
            raise DataError(f"{self._where(dataset, row)}: the chat template failed to render: "
                            f"{type(error).__name__}: {error}") from None


def epoch_order(num_rows: int, *, seed: int, epochs: int | None, num_prompts: int | None,
                shuffle: bool) -> list[int]:
    """Row indices in publishing order: epoch e is a permutation seeded by (seed, e), the same
    on every machine and numpy version that keeps `default_rng`'s stream."""
    total = num_prompts if num_prompts is not None else (epochs or 1) * num_rows
    order: list[int] = []
    epoch = 0
    while len(order) < total:
        rows = (np.random.default_rng([seed, epoch]).permutation(num_rows) if shuffle
                else np.arange(num_rows))
        order.extend(rows[: total - len(order)].tolist())
        epoch += 1
    return order
