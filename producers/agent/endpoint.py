"""An OpenAI-compatible chat endpoint served from a producer's engine, for agentic rollouts.

    endpoint = ChatEndpoint(client.generate, tokenizer)         # the producer's EngineClient
    async with endpoint.session(params, name="g0-s1") as chat:  # one sample's conversation
        openai = AsyncOpenAI(base_url=chat.base_url, api_key=chat.api_key)
        ...                                                     # the agent, unchanged
        sample = chat.sample()                                  # every call, stitched

`POST /v1/chat/completions` and `GET /v1/models` on 127.0.0.1 at a free port, on the producer's
event loop: a call renders its messages with the checkpoint's chat template, generates through
the engine (batched with every other rollout's requests), and answers with the assistant
message, `tool_calls` parsed from the model's text (template.py). The API key names the session;
each session records its calls into one trajectory (stitch.py). The server listens while at
least one session is open.

Sampling is the recipe's: temperature, top-p/top-k and stop ids come from the sample's
`SamplingParams` (the trainer scores with the same temperature), each call seeded from the
sample's seed and its call index, so a replay draws the same numbers. A request's `max_tokens`
(or `max_completion_tokens`) may only lower `max_new_tokens`; its `temperature`, `top_p`, `seed`
and `model` are ignored. `stream=true` and `n` > 1 are refused with a 400, as are calls that do
not extend the session's conversation, two calls of one session at once, and prompts the engine
cannot take (longer than its `max_seq_len`).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec

from streamrl.hooks.generation import GenerationResult, SamplingParams, seed_from_request_id
from streamrl.hooks.rollout import Generate, RolloutSample
from streamrl.hooks.run import Tokenizer
from streamrl.producers.agent.http import JsonServer, Reply, error_reply
from streamrl.producers.agent.stitch import Conversation
from streamrl.producers.agent.template import (
    ChatRequestError,
    ChatTemplate,
    ParsedReply,
    parse_tool_calls,
)


@dataclass(eq=False)
class Session:
    """One sample's conversation: what the agent connects with, and its trajectory so far."""

    base_url: str
    api_key: str
    model: str
    params: SamplingParams
    conversation: Conversation
    busy: bool = False

    def sample(self) -> RolloutSample:
        """Every call of the session stitched into one sample (stitch.py)."""
        return self.conversation.sample()


class ChatEndpoint:
    def __init__(self, generate: Generate, tokenizer: Tokenizer, *, model: str = "policy") -> None:
        self.generate, self.tokenizer, self.model = generate, tokenizer, model
        self.server = JsonServer(self._handle)
        self.sessions: dict[str, Session] = {}
        self._template: ChatTemplate | None = None

    @contextlib.asynccontextmanager
    async def session(self, params: SamplingParams, name: str = "s") -> AsyncIterator[Session]:
        """A session for one sample, sampled with `params`; `ValueError` when the run's tokenizer
        has no chat template. The server stops when the last open session closes."""
        if self._template is None:
            self._template = ChatTemplate(self.tokenizer)
        port = await self.server.start()
        key = f"sk-streamrl-{name}-{secrets.token_hex(8)}"
        session = Session(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, model=self.model,
                          params=params,
                          conversation=Conversation(self._template, self.tokenizer))
        self.sessions[key] = session
        try:
            yield session
        finally:
            del self.sessions[key]
            if not self.sessions:
                await self.server.stop()

    async def _handle(self, method: str, path: str, headers: dict[str, str],
                      body: bytes) -> Reply:
        auth = headers.get("authorization", "")
        session = self.sessions.get(auth.removeprefix("Bearer ").strip())
        if session is None:
            return error_reply(401, "unknown API key: use the session's api_key",
                               kind="authentication_error", code="invalid_api_key")
        if method == "GET" and path == "/v1/models":
            return Reply(200, {"object": "list", "data": [
                {"id": self.model, "object": "model", "created": 0, "owned_by": "streamrl"}]})
        if method == "POST" and path == "/v1/chat/completions":
            try:
                request = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                return error_reply(400, f"the body is not JSON: {error}")
            if not isinstance(request, dict):
                return error_reply(400, "the body must be a JSON object")
            try:
                return await self._complete(session, request)
            except ChatRequestError as error:
                return error_reply(400, str(error), code=error.code)
        return error_reply(404, f"no route {method} {path}: this endpoint serves "
                                "POST /v1/chat/completions and GET /v1/models", code="not_found")

    async def _complete(self, session: Session, request: dict[str, Any]) -> Reply:
        if request.get("stream"):
            raise ChatRequestError("stream=true is not supported by the streamrl agent "
                                   "endpoint: call without streaming", code="stream_unsupported")
        if request.get("n") not in (None, 1):
            raise ChatRequestError("n must be 1: a session records one conversation")
        if session.busy:
            raise ChatRequestError("another call of this session is running: a session records "
                                   "one conversation, one call at a time", code="concurrent_call")
        conv = session.conversation
        messages, tools = request.get("messages"), request.get("tools")
        prompt, context = conv.next_prompt(messages, tools)
        params = self._params(session, request)
        session.busy = True
        try:
            result = await self.generate(prompt, params)
        except ValueError as error:  # the engine refused the prompt, e.g. past max_seq_len
            raise ChatRequestError(str(error), code="context_length_exceeded") from None
        finally:
            session.busy = False
        parse = tools and request.get("tool_choice") != "none"
        reply = self._reply(result, parse=bool(parse))
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        index = conv.num_calls
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_{index}_{i}", "type": "function",
                 "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                for i, c in enumerate(reply.tool_calls)]
        conv.record(messages, tools, context, result, reply, message)
        n_prompt, n_out = len(prompt), len(result.response_tokens)
        choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None,
                                  "finish_reason": ("tool_calls" if reply.tool_calls else
                                                    "length" if result.finish_reason == "length"
                                                    else "stop")}
        if request.get("logprobs"):
            choice["logprobs"] = {"content": [
                {"token": conv.template.token_text(t), "logprob": float(lp), "bytes": None,
                 "top_logprobs": []}
                for t, lp in zip(result.response_tokens, result.logprobs, strict=True)]}
        return Reply(200, {
            "id": f"chatcmpl-{session.api_key[-16:]}-{index}", "object": "chat.completion",
            "created": int(time.time()), "model": self.model, "choices": [choice],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out,
                      "total_tokens": n_prompt + n_out}})

    def _params(self, session: Session, request: dict[str, Any]) -> SamplingParams:
        params = session.params
        limit = request.get("max_completion_tokens", request.get("max_tokens"))
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ChatRequestError(f"max_tokens must be a positive integer, got {limit!r}")
        seed = seed_from_request_id(f"{params.seed}/{session.api_key}/call-"
                                    f"{session.conversation.num_calls}"
                                    if params.seed is None else
                                    f"{params.seed}/call-{session.conversation.num_calls}")
        return msgspec.structs.replace(
            params, seed=seed, max_new_tokens=min(params.max_new_tokens, limit or (1 << 30)))

    def _reply(self, result: GenerationResult, *, parse: bool) -> ParsedReply:
        tokens = result.response_tokens
        if result.finish_reason == "stop" and len(tokens):
            tokens = tokens[:-1]  # the stop token ends the turn; it is not content
        text = self.tokenizer.decode(tokens)  # never raises on garbage ids
        return parse_tool_calls(text) if parse else ParsedReply(text, [], malformed=False)
