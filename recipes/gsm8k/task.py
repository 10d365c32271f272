"""Synthetic GSM8K-like word problems, written as veRL-format parquet files.

    problems = make_problems(seed=0, num_problems=4096, split="train")   # [WordProblem]
    write_parquet(problems, "data/train.parquet")                       # veRL's columns

One-step problems with small numbers, in a handful of phrasings, e.g. "Tom has 3 apples and buys
4 more. How many apples does Tom have now?" (answer 7). A solution is written the way a
chain-of-thought model answers GSM8K, one line of working and the answer in `\\boxed{}`:
"3 + 4 = 7. \\boxed{7}".

Every question belongs to the train or the eval split by a hash of its text, so the train file
never holds an eval question, whatever the seeds. The same seed gives the same rows, byte for
byte.

The parquet rows follow veRL's convention (its examples/data_preprocess/gsm8k.py writes the same
columns), so the same files feed veRL, TRL (the `prompt` column) and streamrl's `[data] train`:

    data_source   "streamrl/word_problems"
    prompt        [{"role": "user", "content": question + INSTRUCTION}]
    ability       "math"
    reward_model  {"style": "rule", "ground_truth": "7"}
    extra_info    {"split": "train", "index": 0, "question": ..., "answer": "3 + 4 = 7. \\boxed{7}",
                   "operation": "add"}
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DATA_SOURCE = "streamrl/word_problems"
INSTRUCTION = " Put the final answer in \\boxed{}."
"""Appended to every question, as GSM8K recipes append their answer-format instruction."""
EVAL_FRACTION = 1 / 8
"""Share of all questions reserved for evaluation (by a hash of the question)."""

NAMES = ("Tom", "Ana", "Ben", "Mia", "Sam", "Lily", "Omar", "Zoe", "Max", "Eva")
ITEMS = ("apple", "pen", "book", "card", "egg", "shell", "stamp", "coin", "cup", "toy")

Operation = Literal["add", "sub"]

# (operation, template). {n} a name, {i} an item (plural), {a} and {b} the numbers. The
# subtraction phrasings are the ones the warm start's sloppy student misreads (warmstart.py).
TEMPLATES: tuple[tuple[Operation, str], ...] = (
    ("add", "{n} has {a} {i} and buys {b} more. How many {i} does {n} have now?"),
    ("add", "{n} had {a} {i}. A friend gave {n} {b} more. How many {i} does {n} have?"),
    ("add", "{n} found {a} {i} on Monday and {b} {i} on Tuesday. How many {i} did {n} find?"),
    ("sub", "{n} has {a} {i} and gives {b} to a friend. How many {i} does {n} have left?"),
    ("sub", "{n} had {a} {i} and lost {b} of them. How many {i} are left?"),
    ("sub", "There are {a} {i} in a box. {n} takes out {b}. How many {i} are still in the box?"),
)
MAX_OPERAND = 12
"""Numbers in a question lie in [1, MAX_OPERAND]; answers in [1, 2 * MAX_OPERAND]."""


class WordProblem(msgspec.Struct, kw_only=True, frozen=True):
    question: str
    """The question without the format instruction."""
    operation: Operation
    a: int
    b: int
    template: int
    """Index into TEMPLATES."""

    @property
    def answer(self) -> int:
        return self.a + self.b if self.operation == "add" else self.a - self.b

    def solution(self, *, operation: Operation | None = None) -> str:
        """The worked answer, "a + b = c. \\boxed{c}"; `operation` overrides the right one (what a
        student who misreads the question writes)."""
        op = operation or self.operation
        result = self.a + self.b if op == "add" else self.a - self.b
        sign = "+" if op == "add" else "-"
        return f"{self.a} {sign} {self.b} = {result}. \\boxed{{{result}}}"

    def messages(self) -> list[dict[str, str]]:
        """The prompt as chat messages, the way the parquet's `prompt` column holds it."""
        return [{"role": "user", "content": self.question + INSTRUCTION}]


def is_eval_question(question: str) -> bool:
    """Whether `question` is reserved for evaluation (a hash split: stable across seeds)."""
    digest = hashlib.blake2b(question.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") < EVAL_FRACTION * 2**32


def draw(rng: np.random.Generator) -> WordProblem:
    """One problem, uniformly over templates, names, items and numbers (a > b for "sub", so
    every answer is positive)."""
    t = int(rng.integers(len(TEMPLATES)))
    op, text = TEMPLATES[t]
    name, item = NAMES[int(rng.integers(len(NAMES)))], ITEMS[int(rng.integers(len(ITEMS)))]
    if op == "add":
        a, b = (int(x) for x in rng.integers(1, MAX_OPERAND + 1, size=2))
    else:
        a = int(rng.integers(2, MAX_OPERAND + 1))
        b = int(rng.integers(1, a))
    question = text.format(n=name, i=item + "s", a=a, b=b)
    return WordProblem(question=question, operation=op, a=a, b=b, template=t)


def make_problems(*, seed: int, num_problems: int, split: Literal["train", "eval"]) -> list[
        WordProblem]:
    """`num_problems` distinct questions of one split; the same seed gives the same list."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    out: list[WordProblem] = []
    max_draws = 200 * num_problems + 1000  # the eval split holds ~1/8 of ~7k questions
    for _ in range(max_draws):
        if len(out) == num_problems:
            return out
        p = draw(rng)
        if p.question not in seen and is_eval_question(p.question) == (split == "eval"):
            seen.add(p.question)
            out.append(p)
    raise ValueError(f"the {split} split has fewer than {num_problems} distinct questions "
                     f"(found {len(out)}); ask for fewer or raise MAX_OPERAND")


def verl_rows(problems: list[WordProblem], split: str) -> pa.Table:
    """The problems as a table in veRL's column convention (module docstring)."""
    return pa.table({
        "data_source": [DATA_SOURCE] * len(problems),
        "prompt": [p.messages() for p in problems],
        "ability": ["math"] * len(problems),
        "reward_model": [{"style": "rule", "ground_truth": str(p.answer)} for p in problems],
        "extra_info": [{"split": split, "index": i, "question": p.question,
                        "answer": p.solution(), "operation": p.operation}
                       for i, p in enumerate(problems)],
    })


def write_parquet(problems: list[WordProblem], path: str | Path, *, split: str) -> Path:
    """Write `problems` as one veRL-format parquet file (atomically: a reader never sees half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(verl_rows(problems, split), tmp)
    tmp.replace(path)
    return path
