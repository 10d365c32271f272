"""What the agent tests build on: a tiny checkpoint whose chat template renders tools, and an
engine that says a scripted tool call where an agent's conversation has no tool result yet.

    ckpt = write_tool_checkpoint(tmp_path / "ckpt")      # tests/data's tiny Qwen3 + TOOL_TEMPLATE
    engine = ScriptedEngine(TorchEngine(...), tokenizer, CALL)

A random model never writes a tool call by itself. `ScriptedEngine` is the real `TorchEngine`
except for requests whose prompt holds no tool turn: those answer `CALL` (encoded by the real
tokenizer, ended by its stop id), scored by the engine's own model, so logprobs and versions are
those the engine would have recorded for these tokens and the trainer recomputes them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from streamrl.hooks.generation import GenerationRequest, GenerationResult, Timing
from streamrl.models import token_logprobs
from streamrl.producers.engine import TorchEngine
from tests.data.tiny_checkpoint import write_checkpoint

# ChatML with tools (written for these tests): a system turn listing the tools as JSON, each tool
# call as a <tool_call> block of {"name", "arguments"} JSON, tool results as "tool" turns.
TOOL_TEMPLATE = (
    "{%- if tools or messages[0]['role'] == 'system' %}{{ '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{%- endif %}"
    "{%- for tool in tools or [] %}{{ '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{ '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' + message['content'] }}"
    "{%- for call in message.get('tool_calls', []) %}"
    "{{ '<tool_call>\\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' }}"
    "{{ (call['function']['arguments'] | tojson) + '}\\n</tool_call>' }}"
    "{%- endfor %}{{ '<|im_end|>\\n' }}"
    "{%- elif message['role'] != 'system' %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}")

CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17 + 25"}}\n</tool_call>'


def write_tool_checkpoint(out: Path) -> Path:
    """tests/data's tiny Qwen3 with TOOL_TEMPLATE, positions up to 1024 (its tiny vocabulary
    spells a tool list almost letter by letter; rotary positions have no weights to grow)."""
    write_checkpoint(out, template=TOOL_TEMPLATE)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 1024}))
    return out


class ScriptedEngine:
    """A `TorchEngine` that answers `text` to every request whose prompt has no tool turn."""

    def __init__(self, inner: TorchEngine, tokenizer, text: str) -> None:
        self.inner, self.tokenizer = inner, tokenizer
        self.reply = np.concatenate([tokenizer.encode(text), [tokenizer.stop_token_id]])
        self.tool_turn = tokenizer.encode("<|im_start|>tool").tolist()
        self.ready: list[GenerationResult] = []
        self.num_scripted = 0

    def add_request(self, request: GenerationRequest) -> None:
        prompt = np.asarray(request.prompt_tokens, np.int32)
        if _contains(prompt.tolist(), self.tool_turn):
            self.inner.add_request(request)
            return
        self.num_scripted += 1
        T = request.params.temperature or 1.0
        tokens = torch.from_numpy(np.concatenate([prompt, self.reply])).long()
        model = self.inner.model
        with torch.inference_mode():
            hidden = model(tokens[None], torch.arange(len(tokens))[None],
                           return_hidden=True).hidden[0, len(prompt) - 1:-1]
            logp, _ = token_logprobs(hidden, model.lm_head.weight, tokens[len(prompt):],
                                     temperature=T)
        now = time.time()
        self.ready.append(GenerationResult(
            request_id=request.request_id, prompt_tokens=prompt,
            response_tokens=self.reply.astype(np.int32), logprobs=logp.numpy(),
            response_versions=np.full(len(self.reply), self.inner.version, np.uint32),
            routed_experts=None, finish_reason="stop", seed=request.params.seed or 0,
            timing=Timing(queued_at=now, started_at=now, first_token_at=now, finished_at=now)))

    def step(self) -> list[GenerationResult]:
        ready, self.ready = self.ready, []
        return ready + (self.inner.step() if self.inner.has_unfinished() else [])

    def has_unfinished(self) -> bool:
        return bool(self.ready) or self.inner.has_unfinished()

    def abort(self, request_id: str) -> bool:
        return self.inner.abort(request_id)

    def load_weights(self, state_dict, version: int) -> None:
        self.inner.load_weights(state_dict, version)

    @property
    def version(self) -> int:
        return self.inner.version

    @property
    def num_experts(self) -> int | None:
        return self.inner.num_experts

    def close(self) -> None:
        self.inner.close()


def _contains(seq: list[int], sub: list[int]) -> bool:
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))
