"""The tokenizer without transformers (`FastTokenizer`: tokenizer.json through the `tokenizers`
library, the chat template through jinja2) gives transformers' ids and text exactly, on every
tokenizer and template the repository uses, and falls back to transformers where it could not."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

from streamrl.data.chat_template import ChatTemplate
from streamrl.data.tokenizer import FastTokenizer, HFTokenizer, load_tokenizer

# Written for this test: system prompt, tools as JSON, assistant tool calls, tool results,
# reasoning, a namespace, loop controls, raise_exception, bos/eos variables, generation blocks.
TOOL_TEMPLATE = """{{- bos_token if bos_token else '' -}}
{%- set ns = namespace(last_user=-1) -%}
{%- for m in messages -%}{%- if m.role == 'user' -%}
{%- set ns.last_user = loop.index0 -%}{%- endif -%}{%- endfor -%}
{%- if tools %}<|im_start|>system
{{ messages[0].content if messages[0].role == 'system' else 'You may call tools.' }}
Tools:
{% for t in tools %}{{ t | tojson }}
{% endfor %}<|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for m in messages -%}
{%- if m.role == 'system' -%}{%- continue -%}{%- endif -%}
{%- if m.role not in ['user', 'assistant', 'tool'] -%}
{{ raise_exception('unknown role ' + m.role) }}{%- endif -%}
<|im_start|>{{ m.role }}
{% if m.role == 'assistant' %}{% generation %}
{%- if m.reasoning_content and loop.index0 > ns.last_user %}<think>{{ m.reasoning_content }}</think>
{% endif -%}
{{ m.content if m.content is string else '' }}
{%- for call in m.tool_calls or [] %}
<tool_call>{{ {'name': call.function.name, 'arguments': call.function.arguments}
   | tojson(sort_keys=True) }}</tool_call>
{%- endfor %}{{ eos_token }}{% endgeneration %}
{% else %}{{ m.content }}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif -%}"""

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Zähle: 1, 2, 3 ✓"},
     {"role": "assistant", "content": "1 2 3"}, {"role": "user", "content": "again\n\n  "}],
    [{"role": "user", "content": "<|im_start|>user\nspecials in content stay text?"}],
]
TOOLS = [{"type": "function", "function": {
    "name": "add", "description": "Add two numbers – exactly.",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"},
                                                   "b": {"type": "number"}}}}}]
TOOL_CONVERSATION = [
    {"role": "user", "content": "Add 17 and 25."},
    {"role": "assistant", "content": None, "reasoning": "I should call add.",
     "tool_calls": [{"type": "function", "function": {"name": "add",
                                                      "arguments": {"a": 17, "b": 25}}}]},
    {"role": "tool", "content": "42"},
    {"role": "assistant", "content": "17 + 25 = 42", "tool_calls": None},
    {"role": "user", "content": "Thanks"},
]
TEXTS = ["What is 2 + 3? The answer is 5.", "<|im_start|>assistant\n42<|im_end|>", "",
         "  spaces\tand\nnewlines  ", "ünïcödé ✓ 你好", "<|endoftext|><|endoftext|>x"]


@pytest.fixture(scope="module")
def gsm8k_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recipes.gsm8k.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("gsm8k-tok")
    train_tokenizer(out)
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    return out


def _both(directory: Path) -> tuple[FastTokenizer, HFTokenizer]:
    fast = load_tokenizer(directory)
    assert isinstance(fast, FastTokenizer), f"{directory} should load without transformers"
    return fast, HFTokenizer(fast.inner, fast.stop_token_ids, directory)


def _same(fast: FastTokenizer, slow: HFTokenizer) -> None:
    assert (fast.vocab_size, fast.pad_token_id, fast.bos_token_id, fast.stop_token_ids) == (
        slow.vocab_size, slow.pad_token_id, slow.bos_token_id, slow.stop_token_ids)
    for conversation in CONVERSATIONS:
        text = fast.render_chat(conversation)
        assert text == slow.render_chat(conversation)
        assert fast.encode(text).tolist() == slow.encode(text).tolist()
    assert fast.render_chats(CONVERSATIONS) == slow.render_chats(CONVERSATIONS)
    for text in TEXTS:
        for bos in (False, True):
            assert fast.encode(text, bos=bos, stop=True).tolist() == slow.encode(
                text, bos=bos, stop=True).tolist(), text
    assert [a.tolist() for a in fast.encode_batch(TEXTS)] == [
        b.tolist() for b in slow.encode_batch(TEXTS)]
    ids = slow.encode(" ".join(TEXTS)).tolist()
    assert fast.decode(ids) == slow.decode(ids)
    assert fast.decode([-1, 10**9, *ids[:5]]) == slow.decode([-1, 10**9, *ids[:5]])


def test_the_test_checkpoints_tokenizer_matches_transformers(checkpoint: Path) -> None:
    _same(*_both(checkpoint))


def test_the_gsm8k_recipes_tokenizer_matches_transformers(gsm8k_tokenizer: Path) -> None:
    _same(*_both(gsm8k_tokenizer))


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_tool_calls_reasoning_and_specials_render_as_transformers_does(
        checkpoint: Path, tmp_path: Path, add_generation_prompt: bool) -> None:
    copy = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
    (copy / "chat_template.jinja").write_text(TOOL_TEMPLATE)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    (copy / "tokenizer_config.json").write_text(json.dumps({**config, "bos_token": "<|im_start|>"}))
    fast, slow = _both(copy)
    _same(fast, slow)
    assert fast.template is not None
    for tools in (TOOLS, None):
        for conversation in [TOOL_CONVERSATION, *CONVERSATIONS]:
            mine = fast.template.render(conversation, tools=tools,
                                        add_generation_prompt=add_generation_prompt)
            theirs = slow.inner.apply_chat_template(
                conversation, tools=tools, add_generation_prompt=add_generation_prompt,
                tokenize=False)
            assert mine == theirs
    rendered = fast.template.render(TOOL_CONVERSATION, tools=TOOLS, add_generation_prompt=True)
    assert '"arguments": {"a": 17, "b": 25}' in rendered and "<think>" not in rendered
    assert "Add two numbers – exactly." in rendered  # tojson keeps non-ASCII, as transformers
    with pytest.raises(jinja2.TemplateError, match="unknown role robot"):
        fast.template.render([{"role": "robot", "content": "x"}], add_generation_prompt=True)


def test_a_template_cannot_reach_python_internals() -> None:
    for source in ("{{ ''.__class__.__mro__ }}", "{% set ns = namespace(_x=1) %}",
                   "{{ messages.append(1) }}"):
        with pytest.raises(jinja2.exceptions.SecurityError):
            ChatTemplate(source, {}).render([{"role": "user", "content": "x"}],
                                            add_generation_prompt=False)


def test_tokenizers_transformers_would_change_load_with_transformers(checkpoint: Path,
                                                                     tmp_path: Path) -> None:
    copy = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
    config = json.loads((copy / "tokenizer_config.json").read_text())
    for change in ({"tokenizer_class": "Qwen2Tokenizer"}, {"clean_up_tokenization_spaces": True},
                   {"additional_special_tokens": ["<|not_in_vocab|>"]}):
        (copy / "tokenizer_config.json").write_text(json.dumps({**config, **change}))
        assert isinstance(load_tokenizer(copy), HFTokenizer), change


def test_loading_the_recipes_tokenizer_imports_no_transformers(gsm8k_tokenizer: Path) -> None:
    code = ("import sys; from streamrl.data.tokenizer import load_tokenizer; "
            f"t = load_tokenizer({str(gsm8k_tokenizer)!r}); "
            "t.encode(t.render_chat([{'role': 'user', 'content': 'hi'}])); "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
