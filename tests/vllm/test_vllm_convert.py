"""vLLM's token-in/token-out answers into our columns (producers/vllm/convert.py), on the shapes
vllm 0.32 defines (entrypoints/scale_out/token_in_token_out/protocol.py: `GenerateTokensChoice`,
`GenerateLogProbsContent`, `WeightVersionSpan`). Garbled answers are refused naming the field."""

from __future__ import annotations

import numpy as np
import pytest

from streamrl.hooks.generation import SamplingParams
from streamrl.producers.vllm import convert
from streamrl.producers.vllm.convert import VLLMResponseError


def choice(ids=(5, 7, 9), logprobs=(-0.5, -1.0, -0.25), spans=None, reason="length"):
    return {"index": 0, "finish_reason": reason, "token_ids": list(ids),
            "logprobs": {"content": [{"token_id": t, "logprob": lp, "top_logprobs": []}
                                     for t, lp in zip(ids, logprobs, strict=True)]},
            "weight_versions": spans}


def test_the_request_carries_ids_seed_stops_and_asks_only_for_the_sampled_logprob() -> None:
    params = SamplingParams(temperature=0.7, top_k=5, max_new_tokens=9, stop_token_ids=(3,))
    body = convert.generate_payload("r1", np.array([1, 2], np.int32), params, seed=(1 << 64) - 1)
    assert body["token_ids"] == [1, 2] and body["output_mode"] == "tokens"
    sp = body["sampling_params"]
    assert (sp["max_tokens"], sp["stop_token_ids"], sp["logprobs"], sp["top_k"]) == (9, [3], 0, 5)
    assert sp["ignore_eos"] and not sp["detokenize"]  # only our stop ids end a request
    assert 0 <= sp["seed"] < 1 << 63 and sp["seed"] == convert.server_seed((1 << 64) - 1)
    assert convert.engine_request_id("r1") == "generate-tokens-r1"


def test_tokens_logprobs_versions_and_finish_reason() -> None:
    ch = choice(spans=[{"version": "3", "start": 0, "end": 1}, {"version": "4", "start": 1,
                                                                 "end": 3}])
    tokens, logprobs = convert.output_tokens(ch, "r")
    assert tokens.dtype == np.int32 and tokens.tolist() == [5, 7, 9]
    assert logprobs.dtype == np.float32 and logprobs.tolist() == [-0.5, -1.0, -0.25]
    assert convert.response_versions(ch, 3, submitted=3, where="r").tolist() == [3, 4, 4]
    assert convert.finish_reason(ch, "r") == "length"
    # no spans (an abort before any token, or an older server): the submit-time version
    assert convert.response_versions(choice(), 3, submitted=2, where="r").tolist() == [2, 2, 2]
    empty = {"finish_reason": "abort", "token_ids": [], "logprobs": None}
    assert [len(a) for a in convert.output_tokens(empty, "r")] == [0, 0]


@pytest.mark.parametrize(("bad", "field"), [
    (choice(logprobs=(-0.5, -9999.0, -0.1)), "logprobs.content"),  # vLLM's "no logprob"
    (choice(logprobs=(-0.5, 0.3, -0.1)), "logprobs.content"),
    ({**choice(), "logprobs": {"content": choice()["logprobs"]["content"][:2]}},
     "logprobs.content"),
    ({**choice(), "token_ids": [5, 8, 9]}, "logprobs.content"),
    (choice(spans=[{"version": "default", "start": 0, "end": 3}]), "weight_versions"),
    (choice(spans=[{"version": "1", "start": 0, "end": 2}]), "weight_versions"),
    (choice(spans=[{"version": "1", "start": 1, "end": 3}]), "weight_versions"),
    (choice(reason="error"), "finish_reason"),
])
def test_garbled_answers_are_refused_naming_the_field(bad: dict, field: str) -> None:
    with pytest.raises(VLLMResponseError, match=field):
        convert.output_tokens(bad, "req")
        convert.response_versions(bad, 3, submitted=0, where="req")
        convert.finish_reason(bad, "req")
    with pytest.raises(VLLMResponseError, match="choices"):
        convert.choice({"choices": []}, "req")
