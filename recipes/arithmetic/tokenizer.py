"""A character tokenizer for the arithmetic recipe: one id per character, plus specials.

    tok = Tokenizer()
    ids = tok.encode("12+34=")          # np.int32 [6]; add `bos=True` to prepend <bos>
    tok.decode(ids)                     # "12+34="; never raises, whatever the ids

Ids are fixed forever (they are baked into every checkpoint and every recorded trajectory), so
new characters may only be appended. `decode` treats its input as untrusted model output: an id
outside the vocabulary decodes to `UNKNOWN` ("\ufffd"), which no answer parser accepts.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

PAD, BOS, STOP = "<pad>", "<bos>", "<stop>"
SPECIALS = (PAD, BOS, STOP)
CHARS = "0123456789+-*=() "
UNKNOWN = "\ufffd"  # what any id outside the vocabulary decodes to


class Tokenizer:
    """Character vocabulary: ids 0..2 are <pad>, <bos>, <stop>; then one id per character."""

    def __init__(self) -> None:
        self.pieces: tuple[str, ...] = (*SPECIALS, *CHARS)
        self._ids = {c: i for i, c in enumerate(self.pieces) if c not in SPECIALS}

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    @property
    def pad_token_id(self) -> int:
        return SPECIALS.index(PAD)

    @property
    def bos_token_id(self) -> int:
        return SPECIALS.index(BOS)

    @property
    def stop_token_id(self) -> int:
        """Ends an answer; the sampler stops on it and it is excluded from the response text."""
        return SPECIALS.index(STOP)

    def encode(self, text: str, *, bos: bool = False, stop: bool = False) -> npt.NDArray[np.int32]:
        """Ids of `text`'s characters (prompts are our own data: an unknown character raises
        `ValueError` naming it), optionally framed by <bos> and <stop>."""
        bad = sorted({c for c in text if c not in self._ids})
        if bad:
            raise ValueError(f"characters {bad!r} are not in the arithmetic vocabulary {CHARS!r}")
        ids = [self.bos_token_id] * bos + [self._ids[c] for c in text]
        ids += [self.stop_token_id] * stop
        return np.asarray(ids, dtype=np.int32)

    def decode(
        self, tokens: Iterable[int] | npt.NDArray[np.integer], *, specials: bool = False
    ) -> str:
        """Text of `tokens`. Specials are dropped unless `specials=True` (then rendered as
        "<stop>" etc.); ids outside the vocabulary become `UNKNOWN`. Never raises on ids."""
        try:
            flat = np.asarray(tokens).reshape(-1).tolist()
        except (TypeError, ValueError):  # ragged nesting: decode the top level as it is
            flat = list(tokens)
        out = []
        for x in flat:
            # Only whole numbers are ids; "5", 2.5, NaN, None and nested lists are not.
            is_whole = isinstance(x, int) or (isinstance(x, float) and x.is_integer())
            t = int(x) if is_whole else -1
            if 0 <= t < len(SPECIALS):
                if specials:
                    out.append(SPECIALS[t])
            elif 0 <= t < len(self.pieces):
                out.append(self.pieces[t])
            else:
                out.append(UNKNOWN)
        return "".join(out)


TOKENIZER = Tokenizer()
