"""Dataset files of prompts: JSONL, parquet, or a directory written by `datasets.save_to_disk`,
read into checked rows before a run starts.

    dataset = read_dataset("gsm8k/train.parquet")          # DataError naming file, row, column
    dataset.digest                                         # sha256 of the file's bytes
    [row.prompt for row in dataset.rows]                   # a string, or chat messages

Two conventions are read, with no switch between them:

- veRL: `prompt` is a list of chat messages (`{"role", "content"}`), `reward_model` a struct
  with `ground_truth`, plus `data_source` and `extra_info`.
- TRL: `prompt` is a string or a list of chat messages, and every other column is the reward
  function's by name.

Every column but the prompt goes to the row's metadata unchanged (it reaches the reward as
`RewardInput.metadata[column]`); a veRL ground truth is also `metadata["ground_truth"]`. A ground
truth must be a string, a number or a list of them: anything else is refused here, with the
file, row and column, so no reward meets it in the middle of a run. Row numbers count from 0 in
file order (for JSONL, the non-blank lines).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

GROUND_TRUTH = "ground_truth"  # the metadata key rewards read the reference answer from
REWARD_MODEL = "reward_model"  # veRL's column holding {"ground_truth": ..., "style": ...}
ROLES = ("system", "user", "assistant", "tool")


class DataError(ValueError):
    """A dataset that cannot be used; the message names the file, the row and the column."""


class Message(msgspec.Struct, frozen=True):
    role: str
    content: str


class Row(msgspec.Struct, kw_only=True, frozen=True):
    index: int  # the row's number in the file, from 0
    prompt: str | tuple[Message, ...]
    metadata: dict[str, Any]  # every other column, by name, plus "ground_truth" for veRL rows


class Dataset(msgspec.Struct, kw_only=True, frozen=True):
    path: Path
    digest: str  # sha256 hex of the file's bytes (a save_to_disk directory: its Arrow files')
    rows: tuple[Row, ...]


def read_dataset(path: str | Path, *, prompt_key: str = "prompt") -> Dataset:
    """Every row of `path`, checked; a `DataError` names the first bad one."""
    path = Path(path)
    files = _data_files(path)
    rows = tuple(_row(path, i, record, prompt_key) for i, record in _records(path, files))
    if not rows:
        raise DataError(f"dataset {path} has no rows")
    return Dataset(path=path, digest=_digest(files), rows=rows)


def _data_files(path: Path) -> list[Path]:
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
            raise DataError(f"dataset {path} is a DatasetDict: name one of its splits, "
                            f"e.g. {path / splits[0]}" if splits else f"dataset {path} is a "
                            "DatasetDict: name one of its split directories")
        state = path / "state.json"
        if not state.is_file():
            raise DataError(f"dataset {path} is a directory without state.json: give a JSONL "
                            "or parquet file, or a directory written by datasets.save_to_disk")
        names = [f["filename"] for f in json.loads(state.read_text()).get("_data_files", [])]
        if not names:
            raise DataError(f"dataset {path}: state.json lists no data files")
        return [path / name for name in names]
    if path.suffix not in (".jsonl", ".json", ".parquet"):
        raise DataError(f"dataset {path}: unknown format {path.suffix or '(no suffix)'!r}; give "
                        "a .jsonl, .json (one object per line) or .parquet file, or a directory "
                        "written by datasets.save_to_disk")
    return [path]


def _records(path: Path, files: list[Path]) -> Iterator[tuple[int, dict[str, Any]]]:
    if path.suffix in (".jsonl", ".json") and not path.is_dir():
        yield from _jsonl(path)
        return
    index = 0
    for file in files:
        try:
            table = (pq.read_table(file) if file.suffix == ".parquet"
                     else pa.ipc.open_stream(file).read_all())
        except (pa.ArrowException, OSError) as error:
            raise DataError(f"dataset {path}: cannot read {file.name}: {error}") from None
        for record in table.to_pylist():
            yield index, record
            index += 1


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    index = 0
    with path.open("rb") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = msgspec.json.decode(line)
            except msgspec.DecodeError as error:
                raise DataError(f"dataset {path} row {index} (line {line_number}) is not JSON: "
                                f"{error}") from None
            if not isinstance(record, dict):
                raise DataError(f"dataset {path} row {index} (line {line_number}) is a "
                                f"{_kind(record)}, expected a JSON object")
            yield index, record
            index += 1


def _row(path: Path, index: int, record: dict[str, Any], prompt_key: str) -> Row:
    where = f"dataset {path} row {index}"
    if prompt_key not in record:
        raise DataError(f"{where}: no column {prompt_key!r} (the prompt); its columns are "
                        f"{sorted(record)} (set data.prompt_key to the prompt's column)")
    prompt = _prompt(record[prompt_key], f"{where}, column {prompt_key!r}")
    metadata = {k: v for k, v in record.items() if k != prompt_key}
    reward_model = metadata.get(REWARD_MODEL)
    if reward_model is not None:
        if not isinstance(reward_model, dict) or GROUND_TRUTH not in reward_model:
            raise DataError(f"{where}, column {REWARD_MODEL!r}: expected a struct with a "
                            f"{GROUND_TRUTH!r} field (veRL's convention), got "
                            f"{_kind(reward_model)}")
        _check_ground_truth(reward_model[GROUND_TRUTH],
                            f"{where}, column '{REWARD_MODEL}.{GROUND_TRUTH}'")
        metadata.setdefault(GROUND_TRUTH, reward_model[GROUND_TRUTH])
    elif GROUND_TRUTH in metadata:
        _check_ground_truth(metadata[GROUND_TRUTH], f"{where}, column {GROUND_TRUTH!r}")
    return Row(index=index, prompt=prompt, metadata=metadata)


def _prompt(value: Any, where: str) -> str | tuple[Message, ...]:
    if isinstance(value, str):
        if not value:
            raise DataError(f"{where}: the prompt is empty")
        return value
    if not isinstance(value, list | tuple):
        raise DataError(f"{where}: expected a string or a list of chat messages "
                        f"({{'role', 'content'}}), got {_kind(value)}")
    if not value:
        raise DataError(f"{where}: the prompt is an empty list of messages")
    messages = []
    for k, message in enumerate(value):
        if not isinstance(message, dict):
            raise DataError(f"{where}, message {k}: expected {{'role', 'content'}}, got "
                            f"{_kind(message)}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or role not in ROLES:
            raise DataError(f"{where}, message {k}: 'role' must be one of {list(ROLES)}, got "
                            f"{role!r}")
        if not isinstance(content, str):
            raise DataError(f"{where}, message {k}: 'content' must be a string, got "
                            f"{_kind(content)}")
        messages.append(Message(role=role, content=content))
    return tuple(messages)


def _check_ground_truth(value: Any, where: str) -> None:
    """A string, a finite number or a non-empty list of them: what rewards compare answers to."""
    items = value if isinstance(value, list) and value else [value]
    for item in items:
        ok = (isinstance(item, str) or (isinstance(item, int | float) and not isinstance(item, bool)
                                        and math.isfinite(item)))
        if not ok:
            raise DataError(f"{where}: a ground truth must be a string, a finite number or a "
                            f"list of them, got {_kind(value)}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for file in files:
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()
