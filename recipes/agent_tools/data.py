"""Write the agent recipe's questions: sums and products of two- and three-digit numbers, which the
calculator tool answers.

    python -m recipes.agent_tools.data runs/agent_tools     # runs/agent_tools/train.jsonl

Rows use TRL's convention: a string `prompt` (rendered for the prompts stream), and the columns
the agent and the reward read by name: `question` (what the agent asks) and `answer`.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NUM_TRAIN = 2048


def rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        op = rng.choice("+*")
        question = f"What is {a} {op} {b}?"
        out.append({"prompt": question, "question": question,
                    "answer": str(a + b if op == "+" else a * b)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(NUM_TRAIN)))
    print(f"wrote {out / 'train.jsonl'} ({NUM_TRAIN} questions)")


if __name__ == "__main__":
    main()
