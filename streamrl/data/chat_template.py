"""A checkpoint's chat template rendered with jinja2 alone, as transformers renders it, so a
process that only renders prompts need not import transformers (~3 s).

    template = ChatTemplate(source, {"eos_token": "<|im_end|>"})   # tokenizer_config's tokens
    text = template.render(messages, add_generation_prompt=True, tools=None)

What the template sees matches transformers' `apply_chat_template` (5.x): a sandboxed, immutable
environment with `trim_blocks` and `lstrip_blocks`, the loop-control extension and a
`{% generation %}` block (rendered as its body); `raise_exception(msg)`, `strftime_now(fmt)`, a
`tojson` filter that writes JSON as `json.dumps` does (non-ASCII kept, `indent`, `separators`,
`sort_keys`), a `namespace` that refuses underscore names, and `dict`; the variables `messages`
(keys whose value is None dropped; a reasoning given as `reasoning`/`thinking`/
`reasoning_content` under all three names), `tools`, `documents`, `add_generation_prompt` and
the named special tokens as strings. tests/data/test_fast_tokenizer.py renders the repository's
templates both ways and requires the same text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
"""Names a message's reasoning may come under; the template gets it under all of them."""


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (templates that mark the assistant's tokens for
    transformers' assistant mask): rendered as its body, which is all a prompt needs."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


class _Namespace(jinja2.utils.Namespace):
    """`namespace(...)` without underscore attributes (no reach into Python internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # jinja Namespace's own signature
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"a chat template may not set the underscore attribute {name!r} on a namespace")


class _Dict:
    """`dict(...)` and `dict.fromkeys(...)` for templates, nothing else of the type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise, strftime_now=_strftime_now, dict=_Dict(),
                       namespace=_Namespace)
    return env


def _plain(value: Any) -> Any:
    """`value` rebuilt from plain JSON types (str/int/float subclasses such as numpy scalars or
    enums reduced to the base type): the sandbox sees data, never an object's methods."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return _plain(item())
    raise TypeError(f"a chat message holds a {type(value).__name__}, which a chat template "
                    "cannot read: give plain JSON values")


def _message(message: Any) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise TypeError(f"chat messages must be dicts, got {message!r}")
    out = {k: v for k, v in _plain(message).items() if v is not None}
    reasoning = next((out[k] for k in REASONING_KEYS if out.get(k) is not None), None)
    if reasoning is not None:
        out = {"thinking": reasoning, **out, "reasoning_content": reasoning}
    return out


class ChatTemplate:
    """One chat template, compiled once; `special_tokens` are the tokenizer's named special
    tokens (bos_token, eos_token, unk_token, sep_token, pad_token, cls_token, mask_token)."""

    def __init__(self, source: str, special_tokens: Mapping[str, str]) -> None:
        self.source = source
        self.special_tokens = dict(special_tokens)
        self._compiled = _environment().from_string(source)

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool,
               tools: Sequence[Mapping[str, Any]] | None = None,
               documents: Sequence[Mapping[str, Any]] | None = None) -> str:
        """The conversation as text; raises what the template raises (`raise_exception`: a
        `jinja2.TemplateError`) and `ValueError` for an empty conversation."""
        if not messages:
            raise ValueError("cannot render an empty conversation: give at least one message")
        return self._compiled.render(
            messages=[_message(m) for m in messages], tools=_plain(tools),
            documents=_plain(documents), add_generation_prompt=add_generation_prompt,
            **self.special_tokens)
