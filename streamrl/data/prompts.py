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

from streamrl.data.dataset import DataError, Dataset, Row, read_dataset
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
            specs = tuple(self._render(dataset, row) for row in dataset.rows)
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

    def _render(self, dataset: Dataset, row: Row) -> PromptSpec:
        where = f"dataset {dataset.path} row {row.index}, column {self.options.prompt_key!r}"
        if PROMPT_TEXT in row.metadata:
            raise DataError(f"dataset {dataset.path} row {row.index}: column {PROMPT_TEXT!r} is "
                            "reserved (the rendered prompt's text goes there); rename it")
        text = self._text(row.prompt, where)
        tokens = self.tokenizer.encode(text, bos=not self.options.apply_chat_template)
        if len(tokens) == 0:
            raise DataError(f"{where}: the prompt encodes to no tokens")
        return PromptSpec(prompt_id=f"{self.split}-{dataset.digest[:12]}-{row.index}", text=text,
                          tokens=tuple(int(t) for t in tokens), metadata=row.metadata)

    def _text(self, prompt: str | tuple[Any, ...], where: str) -> str:
        if not self.options.apply_chat_template:
            if not isinstance(prompt, str):
                raise DataError(f"{where}: chat messages need the chat template: set "
                                "data.apply_chat_template = true")
            return prompt
        tok = self.tokenizer
        if not isinstance(tok, ChatTokenizer) or not tok.has_chat_template:
            raise DataError(f"{where}: the tokenizer has no chat template to render prompts "
                            "with: use a checkpoint whose tokenizer_config.json has "
                            "chat_template, or set data.apply_chat_template = false for "
                            "string prompts")
        messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                    else [{"role": m.role, "content": m.content} for m in prompt])
        system = self.options.system_prompt
        if system is not None and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system})
        try:
            text = tok.render_chat(messages)
        except Exception as error:  # a template is user code: name the row
            raise DataError(f"{where}: the chat template failed to render: "
                            f"{type(error).__name__}: {error}") from None
        if not isinstance(text, str) or not text:
            raise DataError(f"{where}: the chat template rendered {text!r}, expected text")
        return text


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
