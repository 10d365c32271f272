"""What the built-in rewards share: the last `\\boxed{...}` of a response, numbers written the
way models and datasets write them, and the prompt's ground truth."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from streamrl.hooks.rollout import RewardInput

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_NUMBER_NOISE = re.compile(r"[,\s$]|\\!|\\,")


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`) whose braces close, or None.
    One pass over the text, however many unclosed braces an answer holds."""
    closing: dict[int, int] = {}  # index of "{" -> index of its "}"
    stack: list[int] = []
    for i, char in enumerate(text):
        if char == "{":
            stack.append(i)
        elif char == "}" and stack:
            closing[stack.pop()] = i
    for match in reversed(list(_BOXED.finditer(text))):
        end = closing.get(match.end() - 1)
        if end is not None:
            return text[match.end():end]
    return None


def parse_number(text: str) -> Decimal | None:
    """`text` as an exact decimal, tolerant of thousands separators, `$`, spaces and a trailing
    period ("1,000", "$72", "72.0", "72."), or None if it is not a finite number."""
    cleaned = _NUMBER_NOISE.sub("", text).rstrip(".")
    if not cleaned or len(cleaned) > 100:  # a 10^100-digit "number" is not an answer
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def ground_truth(sample: RewardInput, key: str) -> str:
    """`metadata[key]` as text. Its absence is the dataset's fault, not the model's: ValueError."""
    if key not in sample.metadata:
        raise ValueError(f"prompt {sample.prompt_id!r} has no metadata[{key!r}] (the reference "
                         f"answer); its metadata keys are {sorted(sample.metadata)}")
    value = sample.metadata[key]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"prompt {sample.prompt_id!r}: metadata[{key!r}] must be a string or "
                         f"a number, got {type(value).__name__}")
    return str(value)
