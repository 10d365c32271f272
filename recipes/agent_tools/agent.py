"""A calculator agent written against the `openai` client, run as a rollout function: each sample
is one conversation with the producer's OpenAI-compatible endpoint (docs/agents.md).

    [rollout]
    rollout = "recipes.agent_tools.agent:rollout"
    reward = "recipes.agent_tools.agent:reward"

The dataset's `question` column is asked (else the rendered prompt text); the model may call
`calculator` any number of times, up to `MAX_TURNS` calls in all. The answer is scored by the
last integer of the conversation's final reply against the `answer` column (`reward`).
"""

from __future__ import annotations

import ast
import asyncio
import json
import operator
import re

import openai

from streamrl.hooks.rollout import RewardInput, RewardOutput, RolloutInput, RolloutSample

MAX_TURNS = 4
SYSTEM = "Solve the problem. Use the calculator tool for arithmetic, then answer with a number."
TOOLS = [{"type": "function", "function": {
    "name": "calculator",
    "description": "Evaluates an arithmetic expression of integers with + - * / and parentheses.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                   "required": ["expression"]}}}]
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.USub: operator.neg}


def calculator(expression: str) -> str:
    """The tool: the expression's value, or "error: ..." (arguments come from the model)."""
    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.operand))
        raise ValueError("only numbers, + - * / and parentheses")

    try:
        result = value(ast.parse(str(expression)[:200], mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError) as error:
        return f"error: {error}"
    return str(int(result)) if float(result).is_integer() else str(result)


def run_tool(name: str, arguments: str) -> str:
    try:
        args = json.loads(arguments)
    except json.JSONDecodeError:
        return "error: arguments are not JSON"
    if name != "calculator" or not isinstance(args, dict):
        return f"error: no tool {name!r}"
    return calculator(args.get("expression", ""))


async def solve(client: openai.AsyncOpenAI, question: str) -> None:
    """The agent loop, as it would run against any OpenAI-compatible server."""
    messages: list[dict] = [{"role": "system", "content": SYSTEM},
                            {"role": "user", "content": question}]
    for _ in range(MAX_TURNS):
        try:
            response = await client.chat.completions.create(
                model="policy", messages=messages, tools=TOOLS)
        except openai.BadRequestError:
            return  # e.g. the conversation outgrew the engine's max_seq_len
        message = response.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            return
        for call in message.tool_calls:
            messages.append({"role": "tool", "tool_call_id": call.id,
                             "content": run_tool(call.function.name, call.function.arguments)})


async def rollout(inp: RolloutInput) -> list[RolloutSample]:
    if inp.chat is None:
        raise ValueError("recipes.agent_tools.agent:rollout needs a producer's chat endpoint "
                         "(RolloutInput.chat)")
    question = str(inp.metadata.get("question") or inp.prompt_text or "")

    async def one(k: int) -> RolloutSample:
        async with inp.chat(k) as chat:  # type: ignore[misc]
            async with openai.AsyncOpenAI(base_url=chat.base_url, api_key=chat.api_key,
                                          max_retries=0) as client:
                await solve(client, question)
            return chat.sample()

    return list(await asyncio.gather(*(one(k) for k in range(inp.num_samples))))


def reward(sample: RewardInput) -> RewardOutput:
    """1 when the final reply's last integer is the answer; the text is untrusted. The response
    is the whole conversation after the first prompt, decoded without special tokens: with a
    ChatML template each later turn starts with its role's line, so the final reply follows the
    last "assistant" line (a tool's result never counts as the answer)."""
    final = sample.response_text.rsplit("assistant\n", 1)[-1]
    if "</tool_call>" in final:
        return RewardOutput(reward=0.0, status="no_final_answer")
    numbers = re.findall(r"-?\d+", final)
    truth = str(sample.metadata.get("answer", "")).strip()
    if not numbers:
        return RewardOutput(reward=0.0, status="no_number")
    right = numbers[-1] == truth
    return RewardOutput(reward=float(right), status="correct" if right else "wrong")
