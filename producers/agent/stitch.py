"""One agent conversation's calls stitched into one trajectory, token for token.

    conv = Conversation(template, tokenizer)
    prompt, context = conv.next_prompt(messages, tools)   # ids for this call; ChatRequestError
    result = await generate(prompt, params)
    reply = conv.record(context, result, parse_tool_calls(text))
    conv.sample()                                         # the RolloutSample so far

The invariant: call k+1's prompt is call k's prompt + generated tokens + the context that follows,
exactly (the recorded ids, never a re-tokenization of the conversation's text). The first call's
prompt is the rendering of its messages, encoded. For a later call the messages must extend the
previous call's messages by the assistant reply (one linear conversation per session). The
context is the template's rendering of what follows the reply: the tail the template writes
after the stop token ending the reply (e.g. the "\\n" after "<|im_end|>"; the stop token itself
too when the reply was cut by length), then the new messages and the opened assistant turn,
taken from rendering the whole conversation, which must extend the rendering of the conversation
up to the reply (`ChatRequestError` otherwise: a template that rewrites earlier turns once later
ones exist, e.g. by dropping past reasoning, cannot be stitched without drift).

Where the template would render the assistant turn differently from the model's tokens (the
model's tool-call JSON spaced differently, an agent that edited the reply), the trajectory keeps
the model's tokens, and the turn is counted in `num_rerendered`. In the trajectory, the first
call's prompt is `prompt_tokens`; every later token is a response token, `loss_mask` True exactly
on the tokens an engine sampled, with their logprobs and versions; context tokens have logprob 0
and the version of the model token before them (so a sample's oldest version is a sampled one).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from streamrl.hooks.generation import GenerationResult
from streamrl.hooks.rollout import RolloutSample
from streamrl.hooks.run import Tokenizer, stop_token_ids
from streamrl.producers.agent.template import (
    ChatRequestError,
    ChatTemplate,
    ParsedReply,
    normalize_messages,
)


class Conversation:
    def __init__(self, template: ChatTemplate, tokenizer: Tokenizer) -> None:
        self.template, self.tokenizer = template, tokenizer
        self.stop_ids = stop_token_ids(tokenizer)
        self.prompt: npt.NDArray[np.int32] | None = None  # the first call's prompt
        self.tokens: list[int] = []  # everything after it, in order
        self.mask: list[bool] = []
        self.logprobs: list[float] = []
        self.versions: list[int] = []
        self.messages: list[dict[str, Any]] = []  # the last call's messages + its reply
        self.tools: list[dict[str, Any]] | None = None
        self.last: GenerationResult | None = None
        self.started_at: float | None = None
        self.num_calls = 0
        self.num_rerendered = 0  # assistant turns the template would render differently
        self.num_malformed = 0  # replies whose tool-call markup did not parse

    def next_prompt(self, raw_messages: Any, tools: Any) -> tuple[npt.NDArray[np.int32],
                                                                  list[int]]:
        """This call's prompt ids and the context ids it adds after the recorded tokens.
        Changes nothing: `record` commits the context with the call's result."""
        messages = normalize_messages(raw_messages)
        if tools is not None and not isinstance(tools, list):
            raise ChatRequestError("tools must be a list")
        if self.prompt is None:
            text = self.template.render(messages, tools, add_generation_prompt=True)
            return self.tokenizer.encode(text), []
        if tools != self.tools:
            raise ChatRequestError("tools changed within one session: its first prompt "
                                   "rendered the first call's tools; open a new session")
        n = len(self.messages) - 1  # messages before the reply
        if messages[:n] != self.messages[:n]:
            raise ChatRequestError(
                "messages must repeat the previous call's messages and then its reply (one "
                "linear conversation per session); open a new session for another",
                code="history_changed")
        if len(messages) <= n or messages[n].get("role") != "assistant":
            raise ChatRequestError(f"messages[{n}] must be the assistant reply of the "
                                   "previous call")
        context = self._context(messages, tools, n)
        prompt = np.concatenate([self.prompt, np.asarray(self.tokens + context, np.int32)])
        return prompt.astype(np.int32), context

    def _context(self, messages: list[dict[str, Any]], tools: Any, n: int) -> list[int]:
        render = self.template.render
        upto_reply = render(messages[:n + 1], tools, add_generation_prompt=False)
        full = render(messages, tools, add_generation_prompt=True)
        if not full.startswith(upto_reply):
            raise ChatRequestError(
                "the chat template renders the earlier turns differently once new messages "
                "follow, so this call's prompt would not extend the recorded tokens; the agent "
                "endpoint needs a template whose rendering of a conversation extends that of "
                "its beginning", code="template_not_prefix_stable")
        assert self.last is not None
        generated = self.last.response_tokens
        ended = self.last.finish_reason == "stop" and len(generated) > 0
        stop_text = self.template.token_text(generated[-1] if ended else self.stop_ids[0])
        cut = upto_reply.rfind(stop_text)
        tail = "" if cut < 0 else upto_reply[cut + len(stop_text) * ended:]
        if not _same_reply(messages[n], self.messages[n]) or not self._renders_as_generated(
                messages[:n], tools, upto_reply):
            self.num_rerendered += 1
        text = tail + full[len(upto_reply):]
        return [int(t) for t in self.tokenizer.encode(text)] if text else []

    def _renders_as_generated(self, before: list[dict[str, Any]], tools: Any,
                              upto_reply: str) -> bool:
        """Whether the template renders the reply turn as exactly the model's tokens' text."""
        opened = self.template.render(before, tools, add_generation_prompt=True)
        assert self.last is not None
        return (upto_reply.startswith(opened) and upto_reply[len(opened):].startswith(
            self.template.text_of(self.last.response_tokens)))

    def record(self, messages: Any, tools: Any, context: list[int], result: GenerationResult,
               reply: ParsedReply, reply_message: dict[str, Any]) -> None:
        """Commit one finished call: its context (model did not sample it) and its tokens."""
        if self.prompt is None:
            self.prompt = np.asarray(result.prompt_tokens, np.int32)
            self.tools = tools
            self.started_at = result.timing.started_at
        version = (self.versions[-1] if self.versions else
                   int(result.response_versions[0]) if len(result.response_versions) else 0)
        self.tokens += context
        self.mask += [False] * len(context)
        self.logprobs += [0.0] * len(context)
        self.versions += [version] * len(context)
        self.tokens += [int(t) for t in result.response_tokens]
        self.mask += [True] * len(result.response_tokens)
        self.logprobs += [float(x) for x in result.logprobs]
        self.versions += [int(v) for v in result.response_versions]
        self.messages = [*normalize_messages(messages), *normalize_messages([reply_message])]
        self.last = result
        self.num_calls += 1
        self.num_malformed += reply.malformed

    def sample(self) -> RolloutSample:
        """The conversation so far as one sample; `ValueError` before the first call."""
        if self.prompt is None or self.last is None or self.started_at is None:
            raise ValueError("the agent made no chat call in this session: nothing to record")
        return RolloutSample(
            prompt_tokens=self.prompt, response_tokens=np.asarray(self.tokens, np.int32),
            logprobs=np.asarray(self.logprobs, np.float32),
            loss_mask=np.asarray(self.mask, np.bool_),
            response_versions=np.asarray(self.versions, np.uint32),
            routed_experts=None,  # MoE routing of agent trajectories is not stitched yet
            finish_reason=self.last.finish_reason, seed=self.last.seed,
            started_at=datetime.fromtimestamp(self.started_at, UTC),
            finished_at=datetime.fromtimestamp(self.last.timing.finished_at, UTC),
            details={"agent_calls": float(self.num_calls),
                     "agent_rerendered_turns": float(self.num_rerendered),
                     "agent_malformed_tool_calls": float(self.num_malformed)})


def _same_reply(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The reply as the client sent it back equals the one returned (ids and extra keys such
    as `refusal` aside)."""
    return all(a.get(k) == b.get(k) for k in ("role", "content", "tool_calls"))
