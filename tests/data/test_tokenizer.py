"""A checkpoint's own tokenizer through transformers: chat template, eos ids as stop ids, and a
decode that survives any model output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from streamrl.data import load_tokenizer
from streamrl.hooks.run import Tokenizer, stop_token_ids


def test_the_chat_template_renders_qwen_style_and_encodes_to_its_special_ids(
        checkpoint: Path) -> None:
    tok = load_tokenizer(checkpoint)
    assert isinstance(tok, Tokenizer) and tok.has_chat_template
    text = tok.render_chat([{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "What is 2 + 3?"}])
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
                    "What is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.encode(text).tolist()
    start, end = (tok.inner.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>"))
    assert ids.count(start) == 3 and ids.count(end) == 2  # specials in the text stay specials
    assert ids[0] == start
    assert tok.decode(ids) == "system\nBe brief.\nuser\nWhat is 2 + 3?\nassistant\n"


def test_stop_ids_are_every_eos_id_of_generation_config(checkpoint: Path) -> None:
    tok = load_tokenizer(checkpoint)
    end, eot = (tok.inner.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    assert tok.stop_token_ids == (end, eot) == stop_token_ids(tok)
    assert tok.stop_token_id == end and tok.pad_token_id == eot


def test_without_generation_eos_ids_the_tokenizer_eos_stops(checkpoint: Path,
                                                            tmp_path: Path) -> None:
    copy = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
    (copy / "generation_config.json").write_text(json.dumps({"eos_token_id": None}))
    tok = load_tokenizer(copy)
    assert tok.stop_token_ids == (tok.inner.convert_tokens_to_ids("<|im_end|>"),)
    (copy / "generation_config.json").write_text(json.dumps({"eos_token_id": "<|im_end|>"}))
    with pytest.raises(ValueError, match="eos_token_id must be an id or a list of ids"):
        load_tokenizer(copy)


@pytest.mark.parametrize("ids", [[-1, 5, 10**12], [2.5, 7], np.array([[3, 4], [5, 6]]),
                                 ["x", None], [], [[1, 2], [3]]])
def test_decode_never_raises_on_model_output(checkpoint: Path, ids: object) -> None:
    assert isinstance(load_tokenizer(checkpoint).decode(ids), str)  # type: ignore[arg-type]


def test_a_directory_without_a_tokenizer_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"no tokenizer in {tmp_path}"):
        load_tokenizer(tmp_path)


def test_stop_token_ids_of_a_one_stop_tokenizer() -> None:
    from tests.run.tiny_task import TOKENIZER

    assert stop_token_ids(TOKENIZER) == (2,)


def test_a_tokenizer_without_chat_template_says_so(checkpoint: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
    (copy / "chat_template.jinja").unlink()
    assert not load_tokenizer(copy).has_chat_template
