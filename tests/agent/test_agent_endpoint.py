"""The producer's OpenAI-compatible endpoint, driven by the real `openai` client: a two-turn
calculator agent stitched into one trajectory token for token, untrusted tool-call text, and the
requests it refuses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import openai
import pytest
import torch

from recipes.agent_tools.agent import SYSTEM, TOOLS, solve
from streamrl.data import load_tokenizer
from streamrl.hooks.generation import GenerationRequest, SamplingParams
from streamrl.models import load_checkpoint, token_logprobs
from streamrl.producers.agent import ChatEndpoint, Session
from streamrl.producers.engine import EngineConfig, TorchEngine
from streamrl.producers.rollout import EngineClient
from tests.agent.scripted import CALL, TOOL_TEMPLATE, ScriptedEngine

QUESTION = "What is 17 + 25?"


class Recording(ScriptedEngine):
    """Also keeps every request the endpoint sent, to compare prompts across calls."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.requests: list[GenerationRequest] = []

    def add_request(self, request: GenerationRequest) -> None:
        self.requests.append(request)
        super().add_request(request)


@contextlib.asynccontextmanager
async def serving(checkpoint: Path, text: str = CALL, template: str | None = None
                  ) -> AsyncIterator[tuple[Session, Recording]]:
    """A session of an endpoint over the scripted engine, stepped as a producer steps it;
    `template` replaces the checkpoint's chat template."""
    tok = load_tokenizer(checkpoint)
    if template is not None:
        tok.inner.chat_template = template
    engine = Recording(TorchEngine(load_checkpoint(checkpoint),
                                   EngineConfig(max_batch_size=4, max_seq_len=512)), tok, text)
    client = EngineClient(engine)
    endpoint = ChatEndpoint(client.generate, tok)

    async def drive() -> None:
        while True:
            if client.has_work():
                await client.step()
            else:
                await asyncio.sleep(0.005)

    driver = asyncio.create_task(drive())
    params = SamplingParams(temperature=1.0, max_new_tokens=6, seed=7,
                            stop_token_ids=tok.stop_token_ids)
    try:
        async with endpoint.session(params, name="g0-s0") as session:
            yield session, engine
    finally:
        driver.cancel()
    assert endpoint.server.port is not None and not endpoint.sessions


def openai_client(session: Session) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=session.base_url, api_key=session.api_key, max_retries=0)


def trainer_logprobs(checkpoint: Path, prompt: np.ndarray, response: np.ndarray) -> np.ndarray:
    """What the trainer computes for each response token of the stitched sequence."""
    model = load_checkpoint(checkpoint)
    tokens = torch.from_numpy(np.concatenate([prompt, response])).long()
    with torch.inference_mode():
        hidden = model(tokens[None], torch.arange(len(tokens))[None],
                       return_hidden=True).hidden[0, len(prompt) - 1:-1]
        logp, _ = token_logprobs(hidden, model.lm_head.weight, tokens[len(prompt):])
    return logp.numpy()


async def test_a_two_turn_tool_agent_is_one_trajectory_token_for_token(
        tool_checkpoint: Path) -> None:
    tok = load_tokenizer(tool_checkpoint)
    async with serving(tool_checkpoint) as (session, engine):
        async with openai_client(session) as client:
            assert [m.id async for m in client.models.list()] == ["policy"]
            await solve(client, QUESTION)
        sample = session.sample()
    first, second = engine.requests  # the tool call, then the answer after the tool's result
    assert engine.num_scripted == 1

    # The first prompt is the template's rendering of the agent's messages with its tools.
    rendered = tok.inner.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        tools=TOOLS, add_generation_prompt=True, tokenize=False)
    assert sample.prompt_tokens.tolist() == tok.encode(rendered).tolist()
    assert np.asarray(first.prompt_tokens).tolist() == sample.prompt_tokens.tolist()

    # Turn 2's prompt is turn 1's prompt + its generated tokens + the context, exactly.
    call = [*tok.encode(CALL).tolist(), tok.stop_token_id]
    n_call, n_prompt2 = len(call), len(second.prompt_tokens)
    stitched = np.concatenate([sample.prompt_tokens, sample.response_tokens])
    assert stitched[:n_prompt2].tolist() == np.asarray(second.prompt_tokens).tolist()
    assert sample.response_tokens[:n_call].tolist() == call
    context = sample.response_tokens[n_call:n_prompt2 - len(sample.prompt_tokens)]
    assert tok.inner.decode(context.tolist()) == (
        "\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n")  # calculator said 42

    # loss_mask: the two generations exactly; logprob 0 elsewhere; versions per token.
    n_answer = len(sample.response_tokens) - (n_prompt2 - len(sample.prompt_tokens))
    assert 1 <= n_answer <= 6
    expected_mask = [True] * n_call + [False] * len(context) + [True] * n_answer
    assert sample.loss_mask.tolist() == expected_mask
    assert (sample.logprobs[~sample.loss_mask] == 0).all()
    assert (sample.logprobs[sample.loss_mask] < 0).all()
    assert sample.response_versions.tolist() == [0] * len(sample.response_tokens)
    assert sample.details == {"agent_calls": 2.0, "agent_rerendered_turns": 0.0,
                              "agent_malformed_tool_calls": 0.0}

    # The trainer, scoring the stitched sequence, sees the engine's logprobs on every model token.
    ours = trainer_logprobs(tool_checkpoint, sample.prompt_tokens, sample.response_tokens)
    np.testing.assert_allclose(ours[sample.loss_mask], sample.logprobs[sample.loss_mask],
                               atol=1e-5)


async def test_a_malformed_tool_call_is_a_plain_reply(tool_checkpoint: Path) -> None:
    broken = '<tool_call>\n{"name": "calculator", "arguments": {"expression": }\n</tool_call>'
    async with serving(tool_checkpoint, broken) as (session, _):
        async with openai_client(session) as client:
            response = await client.chat.completions.create(
                model="anything", messages=[{"role": "user", "content": QUESTION}], tools=TOOLS)
        choice = response.choices[0]
        assert choice.message.tool_calls is None
        assert choice.message.content == broken
        assert choice.finish_reason == "stop"
        assert session.sample().details["agent_malformed_tool_calls"] == 1.0


async def test_a_reply_the_template_renders_differently_keeps_the_models_tokens(
        tool_checkpoint: Path) -> None:
    compact = '<tool_call>{"name":"calculator","arguments":{"expression":"17 + 25"}}</tool_call>'
    tok = load_tokenizer(tool_checkpoint)
    async with serving(tool_checkpoint, compact) as (session, engine):
        async with openai_client(session) as client:
            await solve(client, QUESTION)
        sample = session.sample()
    generated = [*tok.encode(compact).tolist(), tok.stop_token_id]
    assert sample.response_tokens[:len(generated)].tolist() == generated
    second = np.asarray(engine.requests[1].prompt_tokens)
    stitched = np.concatenate([sample.prompt_tokens, sample.response_tokens])
    assert stitched[:len(second)].tolist() == second.tolist()
    assert sample.details["agent_rerendered_turns"] == 1.0


async def test_what_the_endpoint_refuses(tool_checkpoint: Path) -> None:
    user = [{"role": "user", "content": QUESTION}]
    async with serving(tool_checkpoint) as (session, _):
        async with openai_client(session) as client:
            with pytest.raises(openai.BadRequestError, match="stream=true is not supported"):
                await client.chat.completions.create(model="p", messages=user, stream=True)
            first = await client.chat.completions.create(model="p", messages=user, tools=TOOLS)
            assert first.choices[0].finish_reason == "tool_calls"
            [call] = first.choices[0].message.tool_calls
            assert (call.function.name, call.function.arguments) == (
                "calculator", '{"expression": "17 + 25"}')
            with pytest.raises(openai.BadRequestError) as error:  # the history was rewritten
                await client.chat.completions.create(
                    model="p", tools=TOOLS,
                    messages=[{"role": "user", "content": "Something else?"}, {
                        "role": "assistant", "content": "", "tool_calls": [call.model_dump()]}])
            assert error.value.code == "history_changed"
            with pytest.raises(openai.BadRequestError, match="tools changed"):
                await client.chat.completions.create(
                    model="p", messages=[*user, first.choices[0].message.model_dump()])
        async with openai.AsyncOpenAI(base_url=session.base_url, api_key="sk-wrong",
                                      max_retries=0) as stranger:
            with pytest.raises(openai.AuthenticationError):
                await stranger.chat.completions.create(model="p", messages=user)
        assert session.sample().details["agent_calls"] == 1.0  # refused calls record nothing


async def test_a_reply_cut_by_length_is_closed_by_masked_template_tokens(
        tool_checkpoint: Path) -> None:
    tok = load_tokenizer(tool_checkpoint)
    # A tool result already in the first call's messages: the engine samples for real.
    history = [{"role": "user", "content": QUESTION},
               {"role": "assistant", "content": "", "tool_calls": [{
                   "id": "c0", "type": "function", "function": {
                       "name": "calculator", "arguments": '{"expression": "17 + 25"}'}}]},
               {"role": "tool", "tool_call_id": "c0", "content": "42"}]
    async with serving(tool_checkpoint) as (session, engine):
        async with openai_client(session) as client:
            first = await client.chat.completions.create(
                model="p", messages=history, tools=TOOLS, max_tokens=2)
            assert first.choices[0].finish_reason == "length"
            before = engine.inner.stats
            await client.chat.completions.create(
                model="p", tools=TOOLS, max_tokens=2, messages=[
                    *history, first.choices[0].message.model_dump(exclude_none=True),
                    {"role": "user", "content": "Go on."}])
            after = engine.inner.stats
        sample = session.sample()
    assert engine.num_scripted == 0
    second = np.asarray(engine.requests[1].prompt_tokens)
    context = second[len(sample.prompt_tokens) + 2:]
    assert tok.inner.decode(context.tolist()) == (
        "<|im_end|>\n<|im_start|>user\nGo on.<|im_end|>\n<|im_start|>assistant\n")
    assert sample.loss_mask.tolist()[:2 + len(context)] == [True, True] + [False] * len(context)
    assert np.concatenate([sample.prompt_tokens, sample.response_tokens])[
        :len(second)].tolist() == second.tolist()
    # The engine's prefix cache: the second call reuses the first's full KV blocks (its k/v are
    # final up to its reply's last token but one; 16-token blocks) and prefills the rest.
    reused = (len(sample.prompt_tokens) + 1) // 16 * 16
    assert reused > 0
    assert (after["num_prefill_tokens"] - before["num_prefill_tokens"],
            after["num_cached_prefix_tokens"] - before["num_cached_prefix_tokens"]) == (
        len(second) - reused, reused)


async def test_a_template_that_rewrites_earlier_turns_is_refused(tool_checkpoint: Path) -> None:
    # Renders an assistant turn's tool calls only while it is the last message.
    rewriting = TOOL_TEMPLATE.replace(
        "{%- for call in message.get('tool_calls', []) %}",
        "{%- for call in (message.get('tool_calls', []) if loop.last else []) %}")
    assert rewriting != TOOL_TEMPLATE
    user = [{"role": "user", "content": QUESTION}]
    async with (serving(tool_checkpoint, template=rewriting) as (session, _),
                openai_client(session) as client):
        first = await client.chat.completions.create(model="p", messages=user, tools=TOOLS)
        [call] = first.choices[0].message.tool_calls
        with pytest.raises(openai.BadRequestError) as error:
            await client.chat.completions.create(model="p", tools=TOOLS, messages=[
                *user, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "42"}])
        assert error.value.code == "template_not_prefix_stable"


async def test_a_synchronous_agent_runs_in_a_thread(tool_checkpoint: Path) -> None:
    """The blocking `openai.OpenAI` client works from `asyncio.to_thread` (docs/agents.md)."""
    def agent(base_url: str, api_key: str) -> str | None:
        with openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0) as client:
            reply = client.chat.completions.create(
                model="p", messages=[{"role": "user", "content": QUESTION}], tools=TOOLS)
        return reply.choices[0].message.tool_calls[0].function.name

    async with serving(tool_checkpoint) as (session, _):
        name = await asyncio.to_thread(agent, session.base_url, session.api_key)
        assert name == "calculator"
        assert session.sample().details["agent_calls"] == 1.0
