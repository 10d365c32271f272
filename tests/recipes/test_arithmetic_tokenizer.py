"""The arithmetic tokenizer: exact round trips for prompts, and decode never raises on model ids."""

from __future__ import annotations

import numpy as np
import pytest

from recipes.arithmetic.tokenizer import CHARS, TOKENIZER, UNKNOWN


def test_round_trip_every_character() -> None:
    text = CHARS + "12+34=" + "0" * 40
    ids = TOKENIZER.encode(text)
    assert ids.dtype == np.int32
    assert TOKENIZER.decode(ids) == text


def test_specials_frame_the_text_and_decode_hides_them() -> None:
    ids = TOKENIZER.encode("7+8=", bos=True, stop=True)
    assert ids[0] == TOKENIZER.bos_token_id and ids[-1] == TOKENIZER.stop_token_id
    assert TOKENIZER.decode(ids) == "7+8="
    assert TOKENIZER.decode(ids, specials=True) == "<bos>7+8=<stop>"
    ids = {TOKENIZER.pad_token_id, TOKENIZER.bos_token_id, TOKENIZER.stop_token_id}
    assert len(ids) == 3 and max(ids) < TOKENIZER.vocab_size


def test_encode_rejects_characters_outside_the_vocabulary() -> None:
    with pytest.raises(ValueError, match="not in the arithmetic vocabulary"):
        TOKENIZER.encode("12+x=")


@pytest.mark.parametrize(
    "ids",
    [
        [-1, 10**12, TOKENIZER.vocab_size],
        np.array([2**31 - 1, -(2**31)], dtype=np.int32),
        np.array([2**64 - 1], dtype=np.uint64),
        [float("nan"), float("inf"), 3.0, 2.5],
        ["5", None, [3, 4]],
        [[3, 4], [5]],
        [],
        np.zeros((2, 3), dtype=np.int64),  # any shape is flattened
    ],
)
def test_decode_tolerates_any_ids(ids) -> None:
    text = TOKENIZER.decode(ids)
    assert isinstance(text, str)
    assert set(text) <= set(CHARS) | {UNKNOWN}


def test_decode_random_ids_never_raises() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        ids = rng.integers(-50, 100, size=int(rng.integers(0, 12)))
        out = TOKENIZER.decode(ids)
        known = [i for i in ids if 3 <= i < TOKENIZER.vocab_size]
        assert len(out) == len(known) + sum(1 for i in ids if i < 0 or i >= TOKENIZER.vocab_size)
