"""OpenAI chat messages through the checkpoint's own chat template, and the model's text back into
an assistant message with `tool_calls`.

Rendering goes through the HF tokenizer's `apply_chat_template` (streamrl/data/tokenizer.py loads
it), with the request's `tools`. Messages are normalised first, the way HF templates expect
them: `content` None becomes "", a list of content parts becomes their joined text, and a tool
call's `function.arguments` JSON string becomes the object it encodes (templates serialise it
themselves). The same normalised form is what the stitcher compares between calls.

Tool calls are parsed in the Hermes / Qwen format the Qwen templates render:

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "2+3"}}
    </tool_call>

Model output is untrusted: a block that is not a JSON object with a string `name` and an object
`arguments`, or an unclosed block, makes the whole reply plain text (`ParsedReply.malformed`),
never an exception.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any

_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


class ChatRequestError(ValueError):
    """A request the endpoint refuses (HTTP 400), with the message the client sees."""

    def __init__(self, message: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.code = code


class ChatTemplate:
    """The run's HF tokenizer's chat template. `tokenizer` is an `HFTokenizer`
    (`streamrl.data.load_tokenizer`): its `inner` transformers tokenizer renders."""

    def __init__(self, tokenizer: Any) -> None:
        inner = getattr(tokenizer, "inner", None)
        if inner is None or not getattr(inner, "chat_template", None):
            raise ValueError("the agent endpoint renders messages with the checkpoint's chat "
                             "template, and the run's tokenizer has none: give the checkpoint "
                             "a tokenizer_config.json with a chat_template")
        self.tokenizer, self.inner = tokenizer, inner

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, *,
               add_generation_prompt: bool) -> str:
        try:
            return str(self.inner.apply_chat_template(
                messages, tools=tools or None, add_generation_prompt=add_generation_prompt,
                tokenize=False))
        except Exception as error:  # a template's own raise_exception, or a jinja error
            raise ChatRequestError(f"the chat template cannot render these messages: "
                                   f"{error}") from None

    def token_text(self, token_id: int) -> str:
        """The text a token stands for in a rendered template, special tokens included."""
        return str(self.inner.decode([int(token_id)], skip_special_tokens=False))

    def text_of(self, token_ids: Any) -> str:
        """Text of ids, special tokens included (to compare with the template's rendering)."""
        return str(self.inner.decode([int(t) for t in token_ids], skip_special_tokens=False))


def normalize_messages(messages: Any) -> list[dict[str, Any]]:
    """The request's messages as the template and the stitcher see them; `ChatRequestError`
    naming the message when one is not a {role, content} object."""
    if not isinstance(messages, list) or not messages:
        raise ChatRequestError("messages must be a non-empty list")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ChatRequestError(f"messages[{i}] must be an object with a string role")
        m = {k: v for k, v in message.items() if v is not None}
        m["content"] = _text(message.get("content"), i)
        if message.get("tool_calls"):
            m["tool_calls"] = [_normal_call(call, i) for call in message["tool_calls"]]
        else:
            m.pop("tool_calls", None)
        out.append(m)
    return out


def _text(content: Any, i: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    raise ChatRequestError(f"messages[{i}].content must be a string or a list of parts")


def _normal_call(call: Any, i: int) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ChatRequestError(f"messages[{i}].tool_calls: each needs function.name")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        with contextlib.suppress(json.JSONDecodeError):  # else rendered as the string it is
            arguments = json.loads(arguments)
    return {"type": "function", "function": {"name": function["name"], "arguments": arguments}}


@dataclass(frozen=True)
class ParsedReply:
    content: str | None
    tool_calls: list[dict[str, Any]]  # [{"name": str, "arguments": dict}]
    malformed: bool  # the text had tool-call markup that did not parse: kept as plain text


def parse_tool_calls(text: str) -> ParsedReply:
    """The model's text as content plus tool calls (Hermes / Qwen `<tool_call>` blocks)."""
    if "<tool_call>" not in text:
        return ParsedReply(text, [], malformed=False)
    calls = []
    for block in _TOOL_CALL.findall(text):
        try:
            call = json.loads(block)
        except json.JSONDecodeError:
            return ParsedReply(text, [], malformed=True)
        if (not isinstance(call, dict) or not isinstance(call.get("name"), str)
                or not isinstance(call.get("arguments", {}), dict)):
            return ParsedReply(text, [], malformed=True)
        calls.append({"name": call["name"], "arguments": call.get("arguments", {})})
    rest = _TOOL_CALL.sub("", text)
    if not calls or "<tool_call>" in rest:  # an unclosed block
        return ParsedReply(text, [], malformed=True)
    return ParsedReply(rest.strip() or None, calls, malformed=False)
