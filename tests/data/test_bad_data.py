"""Bad datasets and data sections never start a run: each is refused when the recipe loads, with
the file, row and column, at the API and by `streamrl run` (exit 2, the message on stderr), and
no log is written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from streamrl.recipe.config import ConfigError, load_config
from tests.data.conftest import data_recipe
from tests.data.tiny_checkpoint import trl_rows, verl_rows, write_dataset
from tests.helpers import streamrl_here


def _with(rows: list[dict[str, Any]], index: int, **changes: Any) -> list[dict[str, Any]]:
    rows = [dict(r) for r in rows]
    rows[index].update(changes)
    for key, value in changes.items():
        if value is ...:
            del rows[index][key]
    return rows


CASES: dict[str, tuple[str, Any, dict[str, str], str]] = {
    # name: (dataset file, its rows or text, recipe additions, the message)
    "no prompt": ("train.jsonl", _with(trl_rows(3), 1, prompt=...),
                  {}, r"train.jsonl row 1: no column 'prompt' \(the prompt\)"),
    "prompt of a wrong type": ("train.jsonl", _with(trl_rows(3), 2, prompt=42), {},
                               r"row 2, column 'prompt': expected a string or a list of chat"),
    "message without role": ("train.jsonl", _with(verl_rows(2), 1, prompt=[{"content": "hi"}]),
                             {}, r"row 1, column 'prompt', message 0: 'role' must be one of"),
    "message without content": ("train.jsonl", _with(verl_rows(2), 0, prompt=[{"role": "user"}]),
                                {}, r"row 0, column 'prompt', message 0: 'content' must be a "
                                    r"string, got null"),
    "ground truth of a wrong type": (
        "train.parquet", [dict(r, reward_model={"ground_truth": {"value": "5"}})
                          for r in verl_rows(2)], {},
        r"train.parquet row 0, column 'reward_model.ground_truth': a ground truth must be a "
        r"string, a finite number or a list of them, got dict"),
    "no ground truth": ("train.jsonl", _with(verl_rows(2), 1, reward_model={"style": "rule"}),
                        {}, r"row 1, column 'reward_model': expected a struct with a "
                            r"'ground_truth' field"),
    "a line that is not JSON": ("train.jsonl", '{"prompt": "ok"}\n{"prompt": \n', {},
                                r"train.jsonl row 1 \(line 2\) is not JSON"),
    "unknown format": ("train.csv", "prompt\nhi\n", {}, r"unknown format '.csv'"),
    "another prompt column": ("train.jsonl", trl_rows(2), {"data": 'prompt_key = "question"'},
                              r"row 0: no column 'question'.*set data.prompt_key"),
    "messages without the template": ("train.jsonl", verl_rows(2),
                                      {"data": "apply_chat_template = false"},
                                      r"chat messages need the chat template"),
    "a template that fails": ("train.jsonl", verl_rows(2), {"template": "broken"},
                              r"train.jsonl row 1, column 'prompt': the chat template failed "
                              r"to render: .*cannot render this one"),
    "prompts and train": ("train.jsonl", trl_rows(2),
                          {"data": 'prompts = "tests.run.tiny_task:prompts"'},
                          r"\[data\] needs exactly one of train .* and prompts"),
    "path and init": ("train.jsonl", trl_rows(2), {"model": 'init = "tests.run.tiny_task:init"'},
                      r"\[model\] needs exactly one of path .* and init"),
    "epochs and num_prompts": ("train.jsonl", trl_rows(2),
                               {"data": "epochs = 2\nnum_prompts = 5"},
                               r"data.epochs and data.num_prompts both set"),
    "a tokenizer larger than the model": (
        "train.jsonl", trl_rows(2), {"vocab": "100"},
        r"the tokenizer has ids up to 319, but the model in .* has vocab_size 100"),
    "a DatasetDict": ("train_dict", "dict", {}, r"train_dict is a DatasetDict: name one of its "
                                                 r"splits, e.g. .*train_dict/train"),
    "a missing file": ("missing.jsonl", None, {}, r"data.train '.*missing.jsonl' does not exist"),
}


def _write(tmp_path: Path, checkpoint: Path, case: str) -> Path:
    name, rows, extra, _ = CASES[case]
    train = tmp_path / name
    if rows == "dict":
        import datasets

        datasets.DatasetDict({"train": datasets.Dataset.from_list(trl_rows(2))}).save_to_disk(
            str(train))
    elif isinstance(rows, str):
        train.write_text(rows)
    elif rows is not None:
        write_dataset(train, rows)
    if extra.get("template") == "broken":
        checkpoint = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
        (checkpoint / "chat_template.jinja").write_text(
            "{% for m in messages %}{% if '1 + 3' in m['content'] %}"
            "{{ raise_exception('cannot render this one') }}{% endif %}{{ m['content'] }}"
            "{% endfor %}")
    if "vocab" in extra:
        checkpoint = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
        config = json.loads((checkpoint / "config.json").read_text())
        (checkpoint / "config.json").write_text(json.dumps(config | {
            "vocab_size": int(extra["vocab"])}))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(data_recipe(checkpoint, train, data=extra.get("data", ""),
                                  model=extra.get("model", "")))
    return recipe


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_never_starts_a_run(checkpoint: Path, tmp_path: Path, case: str) -> None:
    recipe = _write(tmp_path, checkpoint, case)
    message = CASES[case][3]
    with pytest.raises(ConfigError, match=message) as error:
        load_config(recipe)
    assert str(error.value).startswith(f"{recipe}: ")
    code, _, err = streamrl_here("run", str(recipe), "--log", str(tmp_path / "log"),
                                 "--runs-dir", str(tmp_path / "runs"))
    assert code == 2 and re.search(message, " ".join(err.split())), err
    assert not (tmp_path / "log").exists() and not (tmp_path / "runs").exists()


def test_a_good_recipe_loads(checkpoint: Path, tmp_path: Path) -> None:
    """The table's recipe is fine without its defect (so each case fails for its own reason)."""
    train = write_dataset(tmp_path / "train.jsonl", verl_rows(2))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(data_recipe(checkpoint, train))
    assert load_config(recipe).data.train == str(train)
    assert json.loads((checkpoint / "generation_config.json").read_text())["eos_token_id"]
