"""A checkpoint's own tokenizer, from local files, as our `Tokenizer`.

    tok = load_tokenizer(Path("Qwen2.5-0.5B-Instruct"))   # tokenizer.json, tokenizer_config.json
    text = tok.render_chat([{"role": "user", "content": "2+3?"}])   # its chat template
    ids = tok.encode(text)                                 # np.int32; the template has its specials
    tok.stop_token_ids                                     # generation_config.json's eos ids

Stop tokens are the checkpoint's end-of-sequence ids: `eos_token_id` of generation_config.json
(an int or a list, e.g. Qwen2.5-Instruct's `<|im_end|>` and `<|endoftext|>`), then the
tokenizer's own eos token if it is not among them. `stop_token_id` is the first of them (the
`Tokenizer` protocol's single id); producers stop on all of them. A tokenizer without a pad token
(Llama 3) pads with its first stop id: padding is masked out of every loss.

Where transformers would only wrap the checkpoint's `tokenizer.json` (`tokenizer_class`
PreTrainedTokenizerFast or TokenizersBackend, no tokenization-space clean-up, one chat template),
`FastTokenizer` reads it with the `tokenizers` library and renders the template with jinja2
(chat_template.py): the same ids and text without importing transformers (~3 s of a process's
start). Anything else is loaded by transformers (`HFTokenizer`). Both offer `inner`, the
transformers tokenizer (loaded on first use by `FastTokenizer`), for callers that need more than
the protocol (the agent endpoint's tool-call rendering).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from streamrl.data.chat_template import ChatTemplate
from streamrl.hooks.run import Tokenizer, stop_token_ids

FAST_CLASSES = frozenset({"PreTrainedTokenizerFast", "TokenizersBackend"})
"""`tokenizer_class` values whose transformers tokenizer is the `tokenizer.json` as it is; other
classes (e.g. Qwen2Tokenizer, LlamaTokenizerFast) may rebuild or adjust it, so transformers
loads those. Add a class here only with a test that compares both."""
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")


class _StopIds:
    """What both tokenizers share: the checkpoint's eos ids, and bos/stop around encoded ids."""

    _stop_token_ids: tuple[int, ...]
    bos_token_id: int | None

    def _wrap(self, ids: list[int], bos: bool, stop: bool) -> npt.NDArray[np.int32]:
        """`ids` with the bos token prepended (`bos`, if the tokenizer has one and they do not
        start with it) and the first stop id appended (`stop`)."""
        if bos and self.bos_token_id is not None and ids[:1] != [self.bos_token_id]:
            ids.insert(0, self.bos_token_id)
        ids += [self.stop_token_id] * stop
        return np.asarray(ids, dtype=np.int32)

    @property
    def stop_token_id(self) -> int:
        return self._stop_token_ids[0]

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Every id that ends an answer: the checkpoint's eos ids."""
        return self._stop_token_ids


class HFTokenizer(_StopIds):
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
        return self._wrap(list(self.inner.encode(text, add_special_tokens=False)), bos, stop)

    def encode_batch(self, texts: Sequence[str]) -> list[npt.NDArray[np.int32]]:
        """`encode` of each text (no bos, no stop), in one call: the Rust tokenizer spreads a
        batch over its threads (a dataset's rows render in seconds, not minutes)."""
        batch = self.inner(list(texts), add_special_tokens=False)["input_ids"]
        return [np.asarray(ids, dtype=np.int32) for ids in batch]

    def decode(self, tokens: Iterable[int] | npt.NDArray[np.integer]) -> str:
        """Text of untrusted ids without special tokens; ids the tokenizer does not know are
        dropped. Never raises."""
        ids = _known_ids(tokens, self._vocab_size)
        try:
            return str(self.inner.decode(ids, skip_special_tokens=True))
        except Exception:  # model output must never crash a producer
            return ""


class FastTokenizer(_StopIds):
    """A checkpoint's `tokenizer.json` read by the `tokenizers` library and its chat template
    rendered by jinja2: `HFTokenizer`'s ids and text without transformers (load_tokenizer
    picks it only where the two agree)."""

    def __init__(self, backend: Any, template: ChatTemplate | None, specials: dict[str, str],
                 stop_token_ids: tuple[int, ...], source: Path) -> None:
        self.backend, self.template, self.source = backend, template, source
        self._stop_token_ids = stop_token_ids
        self._vocab_size = int(backend.get_vocab_size(with_added_tokens=True))
        self._pad = _token_id(backend, specials.get("pad_token"))
        self._bos = _token_id(backend, specials.get("bos_token"))

    @functools.cached_property
    def inner(self) -> Any:
        """The same tokenizer loaded by transformers (imported now: ~3 s), for what the
        protocol does not cover (the agent endpoint renders tool calls with it)."""
        return _transformers_tokenizer(self.source)

    @property
    def vocab_size(self) -> int:
        """Tokens the tokenizer knows, added ones included (a model's embedding may be larger)."""
        return self._vocab_size

    @property
    def pad_token_id(self) -> int:
        return self._pad if self._pad is not None else self._stop_token_ids[0]

    @property
    def bos_token_id(self) -> int | None:
        return self._bos

    @property
    def has_chat_template(self) -> bool:
        return self.template is not None and bool(self.template.source)

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """`messages` through the chat template, ending with the assistant's turn opened
        (`add_generation_prompt=True`); the text includes the template's special tokens."""
        if self.template is None:
            raise ValueError(f"the tokenizer in {self.source} has no chat template")
        return self.template.render(list(messages), add_generation_prompt=True)

    def render_chats(self, conversations: Sequence[Sequence[dict[str, str]]]) -> list[str]:
        """`render_chat` of each conversation (a dataset's rows)."""
        return [self.render_chat(c) for c in conversations]

    def encode(self, text: str, *, bos: bool = False, stop: bool = False) -> npt.NDArray[np.int32]:
        """As `HFTokenizer.encode`: special tokens written in `text` stay special."""
        return self._wrap(self.backend.encode(text, add_special_tokens=False).ids, bos, stop)

    def encode_batch(self, texts: Sequence[str]) -> list[npt.NDArray[np.int32]]:
        """`encode` of each text (no bos, no stop), spread over the Rust tokenizer's threads."""
        return [np.asarray(e.ids, dtype=np.int32)
                for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, tokens: Iterable[int] | npt.NDArray[np.integer]) -> str:
        """Text of untrusted ids without special tokens; unknown ids dropped. Never raises."""
        ids = _known_ids(tokens, self._vocab_size)
        try:
            return str(self.backend.decode(ids, skip_special_tokens=True))
        except Exception:  # model output must never crash a producer
            return ""


def _known_ids(tokens: Any, vocab_size: int) -> list[int]:
    """The ids of untrusted `tokens` that the tokenizer knows, flattened; [] for garbage."""
    try:
        flat = np.asarray(tokens).reshape(-1).tolist()
    except (TypeError, ValueError):
        return []
    return [int(t) for t in flat if isinstance(t, int) and 0 <= t < vocab_size]


def load_tokenizer(directory: str | Path) -> HFTokenizer | FastTokenizer:
    """The tokenizer saved in `directory` (local files only): a `FastTokenizer` where its
    `tokenizer.json` is all there is to it, else transformers'; `ValueError` naming the
    directory when there is none or it has no end-of-sequence token to stop on."""
    directory = Path(directory)
    fast = _fast_tokenizer(directory)
    if fast is not None:
        backend, template, specials = fast
        vocab_size = int(backend.get_vocab_size(with_added_tokens=True))
        stops = _stop_ids(directory, _token_id(backend, specials.get("eos_token")), vocab_size)
        return FastTokenizer(backend, template, specials, tuple(stops), directory)
    inner = _transformers_tokenizer(directory)
    stops = _stop_ids(directory, inner.eos_token_id, len(inner))
    return HFTokenizer(inner, tuple(stops), directory)


def _transformers_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer  # heavy: only processes that need it import it

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"no tokenizer in {directory} (tokenizer.json, tokenizer_config.json): "
                         f"{error}; or name one with data.tokenizer") from None


def _stop_ids(directory: Path, eos_id: int | None, vocab_size: int) -> list[int]:
    stops = _generation_eos(directory)
    if eos_id is not None and int(eos_id) not in stops:
        stops.append(int(eos_id))
    if not stops:
        raise ValueError(f"the tokenizer in {directory} has no end-of-sequence token and "
                         "generation_config.json names no eos_token_id: generation could not "
                         "stop")
    bad = [t for t in stops if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"{directory}: eos ids {bad} lie outside the tokenizer's "
                         f"{vocab_size} tokens")
    return stops


def _fast_tokenizer(directory: Path) -> tuple[Any, ChatTemplate | None, dict[str, str]] | None:
    """(tokenizers.Tokenizer, chat template, named special tokens) when transformers would add
    nothing to `tokenizer.json`; None otherwise (transformers loads it, or says what is
    wrong)."""
    path, config_path = directory / "tokenizer.json", directory / "tokenizer_config.json"
    if not path.is_file() or not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if (not isinstance(config, dict) or config.get("tokenizer_class") not in FAST_CLASSES
            or config.get("clean_up_tokenization_spaces") or config.get("add_bos_token")
            or config.get("add_eos_token") or (directory / "special_tokens_map.json").exists()
            or (directory / "added_tokens.json").exists()
            or (directory / "additional_chat_templates").exists()):
        return None
    source = _template_source(directory, config)
    if source is False:
        return None
    specials = {name: text for name in SPECIAL_TOKEN_NAMES
                if (text := _token_text(config.get(name))) is not None}
    from tokenizers import Tokenizer as Backend

    try:
        backend = Backend.from_file(str(path))
    except Exception:  # let transformers load it, or explain why it cannot
        return None
    extra = [_token_text(t) for key in ("additional_special_tokens", "extra_special_tokens")
             for t in (config.get(key) or [])]
    if any(t is None or _token_id(backend, t) is None for t in [*specials.values(), *extra]):
        return None  # transformers would add the token: its ids would differ
    template = ChatTemplate(source, specials) if isinstance(source, str) else None
    return backend, template, specials


def _template_source(directory: Path, config: Mapping[str, Any]) -> str | bool | None:
    """The one chat template (chat_template.jinja, else tokenizer_config's), None without one,
    False where there are several (transformers picks among them)."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    if (directory / "chat_template.json").exists():
        return False
    source = config.get("chat_template")
    return source if source is None or isinstance(source, str) else False


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config writes it: a string or an AddedToken's dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _token_id(backend: Any, text: str | None) -> int | None:
    return None if text is None else backend.token_to_id(text)


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
