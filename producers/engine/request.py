"""Request checks shared by the engines. The request and result types themselves are plain data
of the library layer (`streamrl.hooks.generation`): see its docstring for the
seed, logprob and routing-record conventions every engine follows.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from streamrl.hooks.engine import Engine
from streamrl.hooks.generation import GenerationRequest, GenerationResult


def run_to_completion(engine: Engine, requests: Iterable[GenerationRequest]
                      ) -> list[GenerationResult]:
    """Add `requests` to `engine` and step it until nothing is unfinished; results in request
    order (each engine's `generate`)."""
    order = []
    for request in requests:
        engine.add_request(request)
        order.append(request.request_id)
    done: dict[str, GenerationResult] = {}
    while engine.has_unfinished():
        done.update((r.request_id, r) for r in engine.step())
    return [done[request_id] for request_id in order]


def checked_prompt(
    request: GenerationRequest, vocab_size: int, max_seq_len: int
) -> npt.NDArray[np.int32]:
    """The request's prompt as int32; raises `ValueError` for prompts or stop ids the engine
    cannot serve."""
    name, prompt = request.request_id, np.asarray(request.prompt_tokens)
    if prompt.ndim != 1 or len(prompt) == 0 or not np.issubdtype(prompt.dtype, np.integer):
        raise ValueError(
            f"{name}: prompt_tokens must be a non-empty 1-D list of token ids, "
            f"got shape {prompt.shape} dtype {prompt.dtype}"
        )
    if len(prompt) >= max_seq_len:
        raise ValueError(
            f"{name}: a prompt of {len(prompt)} tokens leaves no room for a response within "
            f"max_seq_len={max_seq_len}"
        )
    ids = np.concatenate([prompt, np.asarray(request.params.stop_token_ids, np.int64)])
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise ValueError(
            f"{name}: prompt or stop token ids lie outside the model's vocabulary [0, {vocab_size})"
        )
    return prompt.astype(np.int32)
